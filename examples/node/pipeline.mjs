#!/usr/bin/env node
// Run an albert-export bundle through transformers.js (@huggingface/transformers), which loads the bundle
// directory as a local model: model.onnx at its root (subfolder ''), fp32, tokenizer.json + tokenizer_config.json.
//
//   node pipeline.mjs TASK BUNDLE < inputs.jsonl
//
// One input per line: a JSON string (fill-mask, text-classification, feature-extraction) or
// {"question", "context"} (question-answering); one JSON line out per input. Tasks: fill-mask,
// text-classification, question-answering, feature-extraction. (token-classification: transformers.js has no
// ALBERT token-classification class, and refuses the bundle.)
import path from 'node:path';
import readline from 'node:readline';

import { env, pipeline } from '@huggingface/transformers';

async function main([task, bundle]) {
  if (!task || !bundle) {
    console.error('usage: node pipeline.mjs TASK BUNDLE < inputs.jsonl');
    return 2;
  }
  const directory = path.resolve(bundle);
  env.localModelPath = path.dirname(directory) + path.sep;
  env.allowRemoteModels = false;
  const pipe = await pipeline(task, path.basename(directory), { subfolder: '', dtype: 'fp32', local_files_only: true });
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const input = JSON.parse(line);
    let output = task === 'question-answering' ? await pipe(input.question, input.context) : await pipe(input);
    if (task === 'feature-extraction') output = output.tolist();
    console.log(JSON.stringify(output));
  }
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (error) => {
  console.error(`pipeline.mjs: ${error.message}`);
  process.exitCode = 1;
});
