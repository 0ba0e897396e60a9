#!/usr/bin/env node
// Answer questions from an albert-export question-answering bundle in Node.js: onnxruntime-node runs model.onnx,
// @huggingface/tokenizers (the tokenizer transformers.js uses) reads tokenizer.json, and the answer is chosen as
// transformers 4.57's QuestionAnsweringPipeline (and albert-run) chooses it: masked softmax, spans of at most
// 15 tokens, the span widened to whole words and sliced from the context, equal answers' scores summed.
//
//   node qa.mjs BUNDLE "question" "context"     one answer, as a JSON line
//   node qa.mjs BUNDLE < questions.jsonl        one {"question", "context"} per line, one JSON line out each
//   node qa.mjs --model model.ort BUNDLE ...    the ORT format copy (albert-export --ort-format) instead
//
// Kept small on purpose: one window per input (a context longer than the model's length is refused; the Python
// runtime slides windows over it with doc_stride), top_k answers, no impossible answer.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import { Tokenizer } from '@huggingface/tokenizers';
import * as ort from 'onnxruntime-node';

const MAX_ANSWER_LEN = 15; // HF's default
const MAX_SEQ_LEN = 384; // HF's default window, capped by the model's length
const UNDESIRED_LOGIT = -10000;
const METASPACE = '\u2581'; // "▁", ALBERT's word-start mark

function readJson(file) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

// The bundle as the Python runtime reads it: manifest format 1, every listed file's sha256 checked.
export async function loadBundle(dir, { model = 'model.onnx' } = {}) {
  const manifest = readJson(path.join(dir, 'manifest.json'));
  if (manifest.format !== 1) throw new Error(`manifest format ${manifest.format} is not 1; re-export the bundle`);
  if (manifest.task !== 'question-answering') {
    throw new Error(`${dir} is a ${manifest.task} bundle; export one with --task question-answering`);
  }
  if (!Object.hasOwn(manifest.files, model)) throw new Error(`the bundle's manifest lists no ${model}`);
  for (const [name, expected] of Object.entries(manifest.files)) {
    const actual = createHash('sha256').update(readFileSync(path.join(dir, name))).digest('hex');
    if (actual !== expected) throw new Error(`checksum mismatch for ${name}; re-export the bundle`);
  }
  const tokenizerConfig = readJson(path.join(dir, 'tokenizer_config.json'));
  const tokenizer = new Tokenizer(readJson(path.join(dir, 'tokenizer.json')), tokenizerConfig);
  const session = await ort.InferenceSession.create(path.join(dir, model));
  const maxLength = Math.min(manifest.tokenizer.max_length, tokenizerConfig.model_max_length, MAX_SEQ_LEN);
  const special = manifest.tokenizer.special_tokens;
  const [clsId, sepId] = [special.cls, special.sep].map((token) => tokenizer.token_to_id(token));
  return { tokenizer, session, maxLength, clsId, sepId };
}

// The context's words as the tokenizer's Metaspace pre-tokenizer sees them: runs of characters that do not
// normalize to a space, each with the one separator before it (which becomes its "▁"), and trailing separators
// as a last word "▁" (HF's fast tokenizer keeps it; tokenizers.js trims the text first, as the slow tokenizer
// does). Indices count code points, as Python's str does. Returns [{start, end, ids, trailing}].
function contextWords(tokenizer, context) {
  const chars = Array.from(context);
  const separator = chars.map((ch) => (tokenizer.normalizer ? tokenizer.normalizer.normalize(ch) : ch) === ' ');
  const words = [];
  for (let i = 0; i < chars.length; ) {
    if (separator[i]) { i += 1; continue; }
    let j = i;
    while (j < chars.length && !separator[j]) j += 1;
    const text = chars.slice(i, j).join('');
    words.push({ start: i > 0 ? i - 1 : i, end: j, ids: tokenizer.encode(text, { add_special_tokens: false }).ids });
    i = j;
  }
  if (chars.length && separator[chars.length - 1]) {
    words.push({ start: chars.length - 1, end: chars.length, ids: [tokenizer.token_to_id(METASPACE)], trailing: true });
  }
  return words;
}

function maskedSoftmax(logits, desired) {
  const masked = Array.from(logits, (value, i) => (desired[i] ? value : UNDESIRED_LOGIT));
  const max = Math.max(...masked);
  const exps = masked.map((value) => Math.exp(value - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((value) => value / sum);
}

export async function answer(bundle, question, context, { topK = 1 } = {}) {
  const { tokenizer, session, maxLength, clsId, sepId } = bundle;
  const questionIds = tokenizer.encode(question, { add_special_tokens: false }).ids;
  const words = contextWords(tokenizer, context);
  const contextIds = words.flatMap((word) => word.ids);
  const ids = [clsId, ...questionIds, sepId, ...contextIds, sepId];
  const pairIds = tokenizer.encode(question, { text_pair: context }).ids;
  const trimmed = words.filter((word) => !word.trailing).flatMap((word) => word.ids);
  if (pairIds.join() !== [clsId, ...questionIds, sepId, ...trimmed, sepId].join()) {
    throw new Error('the word-by-word tokenization differs from the tokenizer\'s; this example cannot align this context');
  }
  if (ids.length > maxLength) {
    throw new Error(`question and context take ${ids.length} tokens, more than the ${maxLength} this example `
      + 'answers in one window');
  }
  const firstContext = questionIds.length + 2;
  const tokenWord = words.flatMap((word, index) => word.ids.map(() => index));
  const typeIds = ids.map((_, i) => (i >= firstContext ? 1 : 0));
  const tensor = (values) => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [1, values.length]);
  const feeds = { input_ids: tensor(ids), attention_mask: tensor(ids.map(() => 1)), token_type_ids: tensor(typeIds) };
  const inputNames = new Set(session.inputNames);
  const outputs = await session.run(Object.fromEntries(Object.entries(feeds).filter(([name]) => inputNames.has(name))));

  // HF's p_mask: only the context's tokens (and CLS, for the null answer) may answer
  const desired = ids.map((_, i) => i === 0 || (i >= firstContext && i < ids.length - 1));
  const start = maskedSoftmax(outputs.start_logits.data, desired);
  const end = maskedSoftmax(outputs.end_logits.data, desired);
  start[0] = 0;
  end[0] = 0; // CLS is never a span
  const spans = [];
  for (let s = 0; s < ids.length; s += 1) {
    for (let e = s; e < Math.min(ids.length, s + MAX_ANSWER_LEN); e += 1) spans.push([s, e, start[s] * end[e]]);
  }
  spans.sort((a, b) => b[2] - a[2]);
  const answers = [];
  for (const [s, e, score] of spans.slice(0, topK * 2 + 10)) { // HF keeps extra candidates: alignment merges some
    if (!desired[s] || !desired[e] || s === 0) continue;
    const chars = Array.from(context);
    const from = words[tokenWord[s - firstContext]].start;
    const to = words[tokenWord[e - firstContext]].end;
    const text = chars.slice(from, to).join('');
    const same = answers.find((found) => found.answer.toLowerCase() === text.toLowerCase());
    if (same) same.score += score;
    else answers.push({ score, start: from, end: to, answer: text });
  }
  answers.sort((a, b) => b.score - a.score);
  return topK === 1 ? answers[0] : answers.slice(0, topK);
}

async function main(argv) {
  const options = {};
  if (argv[0] === '--model') [, options.model, ...argv] = argv;
  if ((argv.length !== 1 && argv.length !== 3) || options.model === undefined && 'model' in options) {
    console.error('usage: node qa.mjs [--model FILE] BUNDLE [QUESTION CONTEXT]   '
      + '(without them: JSON lines {"question", "context"} on stdin)');
    return 2;
  }
  const bundle = await loadBundle(argv[0], options);
  if (argv.length === 3) {
    console.log(JSON.stringify(await answer(bundle, argv[1], argv[2])));
    return 0;
  }
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    const { question, context, top_k: topK = 1 } = JSON.parse(line);
    console.log(JSON.stringify(await answer(bundle, question, context, { topK })));
  }
  return 0;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (error) => {
    console.error(`qa.mjs: ${error.message}`);
    process.exitCode = 1;
  });
}
