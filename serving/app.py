"""The Serve application: `serve run serving/config.yaml`, `serve deploy`, or a RayService with
`import_path: serving.app:build_app`.

Routes: POST /v1/chat/completions (streaming token by token, or not), GET /v1/models, GET /health.
Every failure answers with an OpenAI-shaped error body (serving/errors.py). A request past
`request_timeout_s` gets 504 (an error event once its stream has started) and stops decoding.
The interactive evaluation page is at GET / and its API under /interactive (serving/interactive.py);
both are documented at /docs.
CPU (backend hf): our deployment around the hf engine; each replica loads the base model and
one merged copy per LoRA adapter, and batches concurrent requests inside its engine. GPU (backend
vllm): ray.serve.llm's OpenAI app with LoRA multiplexing (serving/llm_app.py). The request's model
name selects the base model or an adapter either way, and the same bearer auth and request limits
hold on both (serving/guard.py).
"""


import asyncio
import json
import logging
import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from serving import interactive
from serving.config import ServeArgs, ServeBackend
from serving.errors import error_response, install_error_handlers, internal_error
from serving.guard import Guard, RequestLimits
from serving.openai_api import APIError, ChatCompletionRequest, ChunkWriter, completion_body

api = FastAPI(title="aloe-ray", docs_url="/docs", redoc_url=None)
install_error_handlers(api)
interactive.mount(api)


def adapter_base(merged_folder: str) -> str | None:
    """The base a merged adapter folder records (resolve_adapter copies adapter_config.json's
    `base_model_name_or_path` into `aloe_adapter_base.txt`), if known."""
    path = os.path.join(merged_folder, "aloe_adapter_base.txt")
    return open(path).read().strip() if os.path.exists(path) else None


@serve.deployment
@serve.ingress(api)
class ChatServer:
    def __init__(self, args: dict) -> None:
        from aloe_ray.engines.hf import HFEngine
        from aloe_ray.engines.models import resolve_adapter, resolve_model

        self.args = ServeArgs.model_validate(args)
        self.guard = Guard(RequestLimits.of(self.args))
        base = resolve_model(self.args.model)
        folders = {self.args.name: base}
        for a in self.args.adapters:
            folders[a.name] = resolve_adapter(base, a.path)
            trained_on = adapter_base(folders[a.name])
            if trained_on and trained_on not in (self.args.model, os.path.abspath(self.args.model)):
                logging.getLogger("ray.serve").warning(
                    "adapter %s was trained on %s but is served on %s: its replies come from a model it "
                    "was not trained for", a.name, trained_on, self.args.model)
        self.engines = {name: HFEngine(path, model_name=name, max_batch_size=self.args.max_batch_size,
                                       dtype=self.args.dtype)
                        for name, path in folders.items()}
        self.interactive = (interactive.InteractiveService(self.args, self.engines)
                            if self.args.interactive.enabled else None)

    async def __del__(self) -> None:  # Serve awaits it when the replica stops: live sessions get written
        if getattr(self, "interactive", None) is not None:
            await self.interactive.close()

    @api.get("/health")
    async def health(self) -> dict:
        import psutil

        keys = ("running", "cancelled", "requests", "generated_tokens", "batch_width")
        return {"status": "ok", "models": list(self.engines),
                "replica": {"pid": os.getpid(), "rss_bytes": psutil.Process().memory_info().rss},
                "engines": {name: {k: e.stats.as_dict()[k] for k in keys} for name, e in self.engines.items()}}

    @api.get("/v1/models")
    async def models(self, request: Request):
        if (denied := self._check_auth(request)) is not None:
            return denied
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "aloe-ray", "created": 0}
                                           for name in self.engines]}

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        try:
            if (denied := self._check_auth(request)) is not None:
                return denied
            req = await self._parse(request)
            return await self._complete(req)
        except APIError as err:
            return error_response(err)
        except Exception as exc:
            return error_response(internal_error(exc))

    def _check_auth(self, request: Request) -> JSONResponse | None:
        try:
            self.guard.check_auth(request.headers.get("authorization", ""))
        except APIError as err:
            return JSONResponse(err.body(), status_code=err.status)
        return None

    async def _parse(self, request: Request) -> ChatCompletionRequest:
        self.guard.check_body_size(request.headers.get("content-length"))
        raw = await request.body()
        self.guard.check_body_size(len(raw))
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "request body is not valid JSON") from None
        try:
            req = ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"])
            raise APIError(400, f"{param}: {first['msg']}", param=param) from None
        if req.model not in self.engines:
            raise APIError(404, f"model '{req.model}' not found; available: {sorted(self.engines)}",
                           code="model_not_found", param="model")
        self.guard.check_max_tokens(req.max_completion_tokens or req.max_tokens)
        return req

    async def _complete(self, req: ChatCompletionRequest):
        from aloe_ray.engines.base import ChatRequest, PromptTooLong, Sampling

        max_tokens = req.max_completion_tokens or req.max_tokens or self.args.default_max_tokens
        chat = ChatRequest(messages=tuple(m.as_message() for m in req.messages),
                           sampling=Sampling(req.temperature, req.top_p, max_tokens, req.seed, req.stop_strings()))
        engine = self.engines[req.model]
        try:
            if req.stream:
                return await self._stream(req, engine.stream(chat))
            (out,) = await asyncio.wait_for(engine.chat([chat]), self.args.request_timeout_s)
        except asyncio.TimeoutError:
            raise self._timeout() from None
        except PromptTooLong as exc:
            raise APIError(400, str(exc), param="messages", code="context_length_exceeded") from None
        return completion_body(req.model, out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens)

    def _timeout(self) -> APIError:
        return self.guard.timeout_error()

    async def _stream(self, req: ChatCompletionRequest, items) -> StreamingResponse:
        """SSE chunks as the engine decodes. The first item is awaited before answering, so a
        request that fails at once gets its HTTP status; later failures end the stream with an
        error event. Closing `items` (done, failed, timed out, client gone) stops the decoding."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.args.request_timeout_s
        try:
            first = await asyncio.wait_for(anext(items), self.args.request_timeout_s)
        except BaseException:
            await items.aclose()
            raise
        writer = ChunkWriter(req.model, include_usage=bool(req.stream_options and req.stream_options.include_usage))

        def sse(body: dict) -> str:
            return f"data: {json.dumps(body)}\n\n"

        async def events():
            try:
                yield sse(writer.role())
                item = first
                while isinstance(item, str):
                    yield sse(writer.content(item))
                    item = await asyncio.wait_for(anext(items), deadline - loop.time())
                yield sse(writer.finish(item.finish_reason))
                if writer.include_usage:
                    yield sse(writer.usage(item.prompt_tokens, item.completion_tokens))
                yield "data: [DONE]\n\n"
            except asyncio.TimeoutError:
                yield sse(self._timeout().body())
            except Exception as exc:
                yield sse(internal_error(exc).body())
            finally:
                await items.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")


def deployment_options(args: ServeArgs) -> dict:
    return {
        "autoscaling_config": {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                               "initial_replicas": max(args.min_replicas, 1),
                               "target_ongoing_requests": args.target_ongoing_requests},
        "max_ongoing_requests": args.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus,
                              "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}},
    }


def build_app(args: dict) -> Application:
    """Serve application builder (import path `serving.app:build_app`)."""
    parsed = ServeArgs.model_validate(args or {})
    if parsed.backend == ServeBackend.vllm:
        from serving.llm_app import build_llm_app

        return build_llm_app(parsed)
    return ChatServer.options(**deployment_options(parsed)).bind(parsed.model_dump(mode="json"))
