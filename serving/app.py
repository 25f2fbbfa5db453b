"""The Serve application: `serve run serving/config.yaml`, `serve deploy`, or a RayService with
`import_path: serving.app:build_app`.

Routes: POST /v1/chat/completions (streaming token by token, or not; `structured_outputs.choice`,
vLLM's extension, constrains the reply to one of its strings and is the one request that returns
`logprobs`), GET /v1/models, GET /health.
Every failure answers with an OpenAI-shaped error body (serving/errors.py). A request past
`request_timeout_s` gets 504 (an error event once its stream has started) and stops decoding.
The interactive evaluation page is at GET / and its API under /interactive (serving/interactive.py);
both are documented at /docs.
CPU (backend hf): `ChatServer`, an ingress without weights (0 CPUs, one replica) in front of the
engine deployment every job uses too (aloe_ray/engines/deployment.py: EngineServer, autoscaled
between min_replicas and max_replicas); each engine replica loads the base model and one merged
copy per LoRA adapter, and batches concurrent requests. GPU (backend vllm): ray.serve.llm's
OpenAI app with LoRA multiplexing (serving/llm_app.py). The request's model name selects the
base model or an adapter either way, and the same bearer auth and request limits hold on both
(serving/guard.py).
"""


import asyncio
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve import Application

from aloe_ray.config.engines import EngineConfig
from aloe_ray.engines.deployment import EngineServer
from aloe_ray.engines.deployment import deployment_options as engine_deployment_options
from serving import interactive
from serving.config import ServeArgs, ServeBackend
from serving.errors import error_response, install_error_handlers, internal_error
from serving.guard import Guard, RequestLimits
from serving.openai_api import APIError, ChatCompletionRequest, ChunkWriter, choice_logprobs, completion_body

api = FastAPI(title="aloe-ray", docs_url="/docs", redoc_url=None)
install_error_handlers(api)
interactive.mount(api)


INGRESS_OPTIONS = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0}}
"""The ingress holds no weights; one replica keeps the interactive sessions in one place."""


@serve.deployment
@serve.ingress(api)
class ChatServer:
    def __init__(self, args: dict, engine, role_engines: dict | None = None) -> None:
        from aloe_ray.engines.deployment import ServedEngine

        self.args = ServeArgs.model_validate(args)
        self.guard = Guard(RequestLimits.of(self.args))
        ctx = serve.get_replica_context()
        base = ServedEngine("serve", ctx.app_name if ctx else "", self.args.name, handle=engine)
        self.engines = {self.args.name: base, **{a.name: base.for_adapter(a.name, a.name) for a in self.args.adapters}}
        self.interactive = (interactive.InteractiveService(self.args, self.engines, role_engines)
                            if self.args.interactive.enabled else None)

    async def __del__(self) -> None:  # Serve awaits it when the replica stops: live sessions get written
        if getattr(self, "interactive", None) is not None:
            await self.interactive.close()

    @api.get("/health")
    async def health(self) -> dict:
        """The engine replica that answers: its process, and each model's live counters."""
        stats = await self.engines[self.args.name].stats()
        names = {"": self.args.name}
        return {"status": "ok", "models": list(self.engines),
                "replica": {"pid": stats["pid"], "rss_bytes": stats["rss_bytes"], "id": stats["replica"]},
                "engines": {names.get(k, k): v for k, v in stats["models"].items()}}

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
            raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param or None) from None
        if req.model not in self.engines:
            raise APIError(404, f"model '{req.model}' not found; available: {sorted(self.engines)}",
                           code="model_not_found", param="model")
        self.guard.check_max_tokens(req.max_completion_tokens or req.max_tokens)
        return req

    async def _complete(self, req: ChatCompletionRequest):
        from aloe_ray.engines.base import ChatRequest, PromptTooLong, Sampling

        max_tokens = req.max_completion_tokens or req.max_tokens or self.args.default_max_tokens
        choices = tuple(req.structured_outputs.choice) if req.structured_outputs else None
        chat = ChatRequest(messages=tuple(m.as_message() for m in req.messages), choices=choices,
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
        except ValueError as exc:
            if choices is None:
                raise
            raise APIError(400, str(exc), param="structured_outputs.choice") from None
        logprobs = choice_logprobs(choices, out.choice_probs, req.top_logprobs) if choices and req.logprobs else None
        return completion_body(req.model, out.text, out.finish_reason, out.prompt_tokens, out.completion_tokens,
                               logprobs)

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


def engine_config(args: ServeArgs) -> EngineConfig:
    """The engine deployment behind the app, from the app's args (on vllm the adapters are
    ray.serve.llm's LoRA, serving/llm_app.py)."""
    vllm = args.backend == ServeBackend.vllm
    return EngineConfig(backend=args.backend.value, model=args.model, replicas=max(args.min_replicas, 1),
                        max_replicas=args.max_replicas, target_ongoing_requests=args.target_ongoing_requests,
                        num_cpus=args.num_cpus, num_gpus=args.num_gpus, max_concurrency=args.max_ongoing_requests,
                        max_batch_size=args.max_batch_size, torch_threads=args.torch_threads, dtype=args.dtype,
                        max_input_tokens=args.max_input_tokens, timeout_s=args.request_timeout_s,
                        max_model_len=args.max_model_len if vllm else None,
                        gpu_memory_utilization=args.gpu_memory_utilization,
                        adapters={} if vllm else {a.name: a.path for a in args.adapters})


def deployment_options(args: ServeArgs) -> dict:
    """The engine deployment's Serve options: autoscaled between min_replicas (0 allowed: scale
    to zero) and max_replicas."""
    opts = engine_deployment_options(engine_config(args))
    opts.pop("num_replicas", None)
    opts["autoscaling_config"] = {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                                  "initial_replicas": max(args.min_replicas, 1),
                                  "target_ongoing_requests": args.target_ongoing_requests}
    return opts


def build_app(args: dict) -> Application:
    """Serve application builder (import path `serving.app:build_app`)."""
    parsed = ServeArgs.model_validate(args or {})
    if parsed.backend == ServeBackend.vllm:
        from serving.llm_app import build_llm_app

        return build_llm_app(parsed)
    engine = EngineServer.options(**deployment_options(parsed)).bind(engine_config(parsed))
    ingress = {**INGRESS_OPTIONS, "max_ongoing_requests": parsed.max_ongoing_requests * parsed.max_replicas}
    roles = interactive.role_engine_deployments(parsed)
    return ChatServer.options(**ingress).bind(parsed.model_dump(mode="json"), engine, roles)
