"""albert-serve: the runtime behind HTTP (HF Inference API form, KServe v2 tensors), with dynamic batching.

    albert-serve BUNDLE [BUNDLE ...] [--host 127.0.0.1] [--port 8000] [--max-batch-size N] [--max-delay-ms D] [--workers N] ...

Requests are preprocessed on arrival and their windows batched across requests (serving.batcher).
Torch-free: imports runtime, starlette, uvicorn and prometheus_client (the `serve` extra); `serving.ray_serve`
imports ray (the `ray` extra), `serving.triton_model` runs inside Triton's Python backend.
"""
