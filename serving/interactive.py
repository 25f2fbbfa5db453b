"""Interactive evaluation on the Serve app: the page at `/`, the live ALOE session API under
`/interactive/sessions`, and the tree browser under `/interactive/trees` (documented at /docs).

Same rules as the OpenAI API: bearer auth on every /interactive call (the page itself loads
without a key and asks for one on a 401), OpenAI-style error bodies, a bounded session store.
Sessions live in the replica that created them (see README: one replica, or sticky routing).
A turn awaits the engines without any global lock: other sessions go on meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from importlib import resources
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from aloe_ray.config.engines import EngineConfig
from aloe_ray.engines.base import Sampling
from aloe_ray.eval.rollout import JudgeMode
from aloe_ray.personas.loaders import seed_personas
from aloe_ray.personas.model import Persona
from aloe_ray.storage import S3Options
from aloe_ray.trees.grow import RoleBinding
from serving.config import ServeArgs
from serving.live_session import Session, TurnFailed, new_session
from serving.openai_api import APIError
from serving.session_output import write_session
from serving.sessions import SessionStore, StoreFull
from serving.trees_view import TreeRun

STATIC = resources.files("serving") / "static"


class PersonaText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile: str = Field(min_length=1, max_length=4000, description="Objective facts about the user.")
    personality: str = Field(min_length=1, max_length=4000, description="Traits and conversational style.")


class CreateSession(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1, max_length=2, description="One served model name, or two side by side "
                              "(blind: labelled A/B in random order, revealed when the session ends).")
    persona_id: str | None = Field(default=None, description="A benchmark persona (GET /interactive/personas).")
    persona: PersonaText | None = Field(default=None, description="A free-text persona instead of persona_id.")
    mode: Literal["human", "simulated"] = Field(default="human", description="human: the person writes the user "
                                                "turns; simulated: the user simulator plays the persona.")
    turns: int = Field(default=5, ge=1, description="Turns the session may play (up to the server's max_turns).")
    max_tokens: int | None = Field(default=None, ge=1, description="Reply length cap (up to max_tokens_limit).")
    seed: int | None = Field(default=None, description="Seed of the labels' order and of every request.")


class TurnInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message: str | None = Field(default=None, description="human mode: the user's message; simulated: omit.")


class Preference(BaseModel):
    model_config = ConfigDict(extra="forbid")
    turn: int = Field(ge=1)
    preferred: Literal["A", "B"]


class _Refused(Exception):
    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _server():
    from ray import serve

    return serve.get_replica_context().servable_object


def service(request: Request) -> InteractiveService:
    """Dependency of every /interactive route: the replica's service, after the API key check."""
    server = _server()
    if (denied := server._check_auth(request)) is not None:
        raise _Refused(denied)
    svc: InteractiveService | None = getattr(server, "interactive", None)
    if svc is None:
        raise APIError(404, "interactive evaluation is disabled on this server (interactive.enabled: false)")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > svc.max_body_bytes:
        raise APIError(413, f"request body over {svc.max_body_bytes} bytes", code="body_too_large")
    return svc


def serves_base(args: ServeArgs, e: EngineConfig) -> bool:
    """A role engine that is the served base model: the app's own engine answers for it."""
    return (e.backend.value == "hf" and args.backend.value == "hf" and not e.serve_app
            and e.model in (args.model, os.path.abspath(args.model)))


def role_engine_deployments(args: ServeArgs) -> dict:
    """The roles' engines to host in the app, each an engine deployment of its own (name
    `EngineServer.<engine>`, bound by the app builder): every hf or vllm engine that is not the
    served base model. openai engines are HTTP clients and attached ones run elsewhere."""
    from aloe_ray.engines.deployment import ENGINE_DEPLOYMENT, engine_app

    if not args.interactive.enabled:
        return {}
    cfg = args.interactive
    s3 = S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)
    return {name: engine_app(e, s3, name=f"{ENGINE_DEPLOYMENT}.{name}") for name, e in cfg.engines.items()
            if e.backend.value != "openai" and not e.serve_app and not serves_base(args, e)}


class InteractiveService:
    def __init__(self, args: ServeArgs, engines: dict, role_handles: dict | None = None) -> None:
        """`engines`: the app's served models by name; `role_handles`: handles of the role
        engine deployments (role_engine_deployments), by engine name."""
        from aloe_ray.engines.deployment import ENGINE_DEPLOYMENT, ServedEngine
        from aloe_ray.engines.factory import build_engine

        cfg = self.cfg = args.interactive
        self.args, self.models, self.max_body_bytes = args, engines, args.max_body_bytes
        self.s3 = S3Options(endpoint_url=cfg.storage.s3_endpoint_url, region=cfg.storage.s3_region)
        role_handles = role_handles or {}
        role_engines = {}
        for name, e in cfg.engines.items():  # the served base model is reused, not loaded twice
            if serves_base(args, e):
                role_engines[name] = engines[args.name]
            elif e.serve_app:
                role_engines[name] = ServedEngine(name, e.serve_app, e.model)
            elif e.backend.value == "openai":  # an HTTP client
                role_engines[name] = build_engine(e, self.s3)
            elif name in role_handles:
                role_engines[name] = ServedEngine(name, engines[args.name].app, e.model, handle=role_handles[name],
                                                  deployment=f"{ENGINE_DEPLOYMENT}.{name}")
            else:
                raise ValueError(f"interactive engine '{name}' ({e.backend.value}: {e.model}) is hosted by the "
                                 f"app's own deployment of it: build the app with serving.app:build_app")
        self.simulator = self._bind(role_engines[cfg.simulator.engine], cfg.simulator)
        self.judge = self._bind(role_engines[cfg.judge.engine], cfg.judge)
        self.judge_mode = JudgeMode(cfg.judge_mode.history, cfg.judge_mode.scoring.value)
        self.personas = {p.persona_id: p for p in seed_personas(per_profile=1, seed=0, split="benchmark")}
        self.store = SessionStore(cfg.max_sessions, cfg.idle_timeout_s, self._write)
        self.trees = TreeRun(cfg.trees_root, self.s3) if cfg.trees_root else None

    @staticmethod
    def _bind(engine, role) -> RoleBinding:
        s = role.sampling
        return RoleBinding(engine, Sampling(s.temperature, s.top_p, s.max_tokens), role.max_attempts)

    async def _write(self, session: Session) -> None:
        await asyncio.to_thread(write_session, session, self.cfg.output, s3=self.s3, report=self.cfg.report,
                                judge_mode={"history": self.judge_mode.history, "scoring": self.judge_mode.scoring})

    def options(self) -> dict:
        return {"models": list(self.models), "modes": ["human", "simulated"], "max_turns": self.cfg.max_turns,
                "max_tokens_limit": self.args.max_tokens_limit, "default_max_tokens": self.cfg.reply.max_tokens,
                "max_message_chars": self.cfg.max_message_chars, "trees_root": self.cfg.trees_root,
                "roles": {"simulator": self.simulator.engine.model_name, "judge": self.judge.engine.model_name},
                "judge": {"history": self.judge_mode.history, "scoring": self.judge_mode.scoring}}

    def persona(self, body: CreateSession) -> Persona:
        if (body.persona_id is None) == (body.persona is None):
            raise APIError(400, "give exactly one of persona_id (a benchmark persona) and persona (free text)",
                           param="persona_id")
        if body.persona is not None:
            return Persona.pair(body.persona.profile.strip(), body.persona.personality.strip(), split=None,
                                source="interactive")
        if body.persona_id not in self.personas:
            raise APIError(404, f"no benchmark persona '{body.persona_id}' (GET /interactive/personas lists them)",
                           param="persona_id", code="persona_not_found")
        return self.personas[body.persona_id]

    async def create(self, body: CreateSession) -> Session:
        unknown = [m for m in body.models if m not in self.models]
        if unknown:
            raise APIError(404, f"model {unknown[0]!r} not found; available: {sorted(self.models)}",
                           param="models", code="model_not_found")
        if body.turns > self.cfg.max_turns:
            raise APIError(400, f"turns {body.turns} exceeds this server's max_turns of {self.cfg.max_turns}",
                           param="turns")
        if body.max_tokens is not None and body.max_tokens > self.args.max_tokens_limit:
            raise APIError(400, f"max_tokens {body.max_tokens} exceeds this server's limit of "
                           f"{self.args.max_tokens_limit}", param="max_tokens")
        r = self.cfg.reply
        reply = Sampling(r.temperature, r.top_p, body.max_tokens or r.max_tokens)
        session = new_session(self.persona(body), body.models, mode=body.mode, turns=body.turns,
                              engines=self.models, simulator=self.simulator, judge=self.judge, reply=reply,
                              judge_mode=self.judge_mode, seed=body.seed)
        self.store.start_sweeper(min(self.cfg.idle_timeout_s / 4, 30.0))
        try:
            await self.store.add(session)
        except StoreFull as exc:
            raise APIError(429, str(exc), "rate_limit_error", code="sessions_full") from None
        return session

    def get(self, session_id: str) -> Session:
        try:
            session = self.store.get(session_id)
        except KeyError as exc:
            raise APIError(404, str(exc.args[0]), param="session_id", code="session_not_found") from None
        session.touch()
        return session

    async def play(self, session: Session, message: str | None) -> dict:
        """One turn under the session's own lock; a turn already in flight gets 409."""
        if message is not None and len(message) > self.cfg.max_message_chars:
            raise APIError(400, f"message over {self.cfg.max_message_chars} characters", param="message")
        if session.lock.locked():
            raise APIError(409, "a turn of this session is in flight; wait for it", code="session_busy")
        async with session.lock:
            return await self._turn(session, message)

    async def _turn(self, session: Session, message: str | None) -> dict:
        try:
            return await asyncio.wait_for(session.play_turn(message), self.args.request_timeout_s)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        except TurnFailed as exc:
            raise APIError(502, str(exc), "server_error", code="turn_failed") from None
        except asyncio.TimeoutError:
            raise APIError(504, f"the turn took longer than {self.args.request_timeout_s}s", "timeout") from None

    async def run_all(self, session: Session):
        """NDJSON lines: one per played turn until the planned turns are done, then the session."""
        if session.mode != "simulated":
            raise APIError(400, "streaming all turns needs a simulated session", param="mode")
        if session.lock.locked():
            raise APIError(409, "a turn of this session is in flight; wait for it", code="session_busy")

        async def lines():
            async with session.lock:  # taken once the stream starts: a dropped response holds nothing
                while len(session.turns) < session.planned_turns and not session.ended:
                    try:
                        view = await self._turn(session, None)
                    except APIError as err:
                        yield json.dumps({"event": "error", "status": err.status, **err.body()}) + "\n"
                        return
                    yield json.dumps({"event": "turn", **view}) + "\n"
                yield json.dumps({"event": "done", "session": session.view()}) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def close(self) -> None:
        """End and write every live session (the replica is stopping)."""
        for session in list(self.store.sessions.values()):
            try:
                await self.store.end(session, "server_stopped")
            except Exception:  # one failed write must not lose the others
                logging.getLogger("ray.serve").exception("interactive: writing session %s failed", session.session_id)

    async def finish(self, session: Session) -> dict:
        await self.store.end(session, "finished")
        return session.view()


router = APIRouter(prefix="/interactive", tags=["interactive evaluation"])


@router.get("/options", summary="Models, limits and roles of this server (what the page offers)")
async def options(svc: InteractiveService = Depends(service)) -> dict:
    return svc.options()


@router.get("/personas", summary="The benchmark personas (the built-in seeds' held-out split)")
async def personas(svc: InteractiveService = Depends(service)) -> dict:
    return {"personas": [{"persona_id": p.persona_id, "profile": p.profile, "personality": p.personality}
                         for p in svc.personas.values()]}


@router.post("/sessions", summary="Start a session (one model, or two side by side)", status_code=201)
async def create_session(body: CreateSession, svc: InteractiveService = Depends(service)) -> dict:
    return (await svc.create(body)).view()


@router.get("/sessions/{session_id}", summary="A session's state (models hidden until it ends)")
async def get_session(session_id: str, svc: InteractiveService = Depends(service)) -> dict:
    return svc.get(session_id).view()


@router.post("/sessions/{session_id}/turns", summary="Play one turn: reply(ies), judge scores, AL(k) so far")
async def play_turn(session_id: str, body: TurnInput | None = None, svc: InteractiveService = Depends(service)) -> dict:
    return await svc.play(svc.get(session_id), (body or TurnInput()).message)


@router.post("/sessions/{session_id}/run", summary="Simulated: stream every remaining turn (NDJSON, one line a turn)")
async def run_session(session_id: str, svc: InteractiveService = Depends(service)):
    return await svc.run_all(svc.get(session_id))


@router.post("/sessions/{session_id}/preferences", summary="Side by side: mark the preferred reply of a turn")
async def prefer(session_id: str, body: Preference, svc: InteractiveService = Depends(service)) -> dict:
    session = svc.get(session_id)
    try:
        session.prefer(body.turn, body.preferred)
    except ValueError as exc:
        raise APIError(400, str(exc), param="turn") from None
    return {"preferences": session.view()["preferences"]}


@router.post("/sessions/{session_id}/finish", summary="End the session: reveal the models and write it")
async def finish(session_id: str, svc: InteractiveService = Depends(service)) -> dict:
    return await svc.finish(svc.get(session_id))


@router.get("/trees", summary="The configured tree run's trees (status, persona, size)")
async def list_trees(svc: InteractiveService = Depends(service)) -> dict:
    run = _tree_run(svc)
    try:
        trees = await asyncio.to_thread(run.trees)
    except FileNotFoundError as exc:
        raise APIError(404, str(exc), code="trees_not_found") from None
    return {"root": run.root, "trees": trees}


@router.get("/trees/{tree_id}", summary="One tree, node by node (every column the run wrote)")
async def get_tree(tree_id: str, svc: InteractiveService = Depends(service)) -> dict:
    run = _tree_run(svc)
    try:
        return await asyncio.to_thread(run.tree, tree_id)
    except (KeyError, FileNotFoundError) as exc:
        raise APIError(404, str(exc.args[0]), param="tree_id", code="tree_not_found") from None


def _tree_run(svc: InteractiveService) -> TreeRun:
    if svc.trees is None:
        raise APIError(404, "no tree run configured (set interactive.trees_root in the app's args)",
                       code="trees_not_configured")
    return svc.trees


def _page(name: str, media_type: str):
    async def serve_file() -> FileResponse:
        return FileResponse(str(STATIC / name), media_type=media_type)
    return serve_file


def mount(api: FastAPI) -> None:
    """Add the page, its assets and the /interactive routes to the app (whose OpenAI-style error
    handlers, serving/errors.py, answer the APIErrors raised here)."""
    api.include_router(router)
    api.add_api_route("/", _page("index.html", "text/html"), methods=["GET"], include_in_schema=False)
    for name, media in (("app.js", "text/javascript"), ("style.css", "text/css")):
        api.add_api_route(f"/static/{name}", _page(name, media), methods=["GET"], include_in_schema=False)

    @api.exception_handler(_Refused)
    async def refused(_request: Request, exc: _Refused) -> JSONResponse:
        return exc.response
