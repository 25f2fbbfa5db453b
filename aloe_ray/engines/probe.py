"""Before a job makes anything: every engine its roles use answers.

An openai engine's endpoint is asked for its models with the official client, and, when it lists
none or not this one, for one token of a chat completion, the call the engine makes. Connection
refused, DNS, TLS, a timeout, 401/403, 404 and 5xx are errors (`EngineUnavailable`, exit 2); any
other answer (a 400 or 429 to the one-token call) shows the endpoint is there. hf and vllm
engines are checked by `start_engines`: their Serve deployment must reach RUNNING.
"""

from __future__ import annotations

from pydantic import BaseModel

from aloe_ray.config.engines import EngineBackend, EngineConfig
from aloe_ray.engines.base import EngineError

CONNECT_TIMEOUT_S = 10.0
PROBE_RETRIES = 2
"""The client's own retries (backoff 0.5, 1 s) of a probe that could not connect: a refused or
unresolvable endpoint is reported in seconds, not after a tree's 34 s of retries."""


class EngineUnavailable(EngineError):
    """An engine a role needs does not answer: the jobs exit 2 on it, before anything is made."""


def roles_using(roles: BaseModel) -> dict[str, list[str]]:
    """The roles of a job's roles config by the engine they name."""
    out: dict[str, list[str]] = {}
    for role in type(roles).model_fields:
        out.setdefault(getattr(roles, role).engine, []).append(role)
    return out


def describe(name: str, cfg: EngineConfig, roles: list[str]) -> str:
    where = f"openai model '{cfg.model}' at {cfg.base_url}" if cfg.backend == EngineBackend.openai else \
        f"{cfg.backend.value} model '{cfg.model}'"
    return f"engine '{name}' ({where}; role{'s' if len(roles) != 1 else ''} {', '.join(roles) or 'none'})"


def check_endpoints(engines: dict[str, EngineConfig], used_by: dict[str, list[str]]) -> None:
    """EngineUnavailable naming every openai engine (its roles and URL) whose endpoint cannot
    serve its model."""
    problems = []
    for name, cfg in engines.items():
        if cfg.backend == EngineBackend.openai:
            why = endpoint_problem(cfg)
            if why:
                problems.append(f"{describe(name, cfg, used_by.get(name, []))}: {why}")
    if problems:
        raise EngineUnavailable("an endpoint the job needs does not answer; nothing was made:\n  "
                                + "\n  ".join(problems))


def endpoint_problem(cfg: EngineConfig) -> str | None:
    """Why the endpoint cannot serve `cfg.model`; None when it can."""
    import openai

    from aloe_ray.engines.openai_api import api_key

    try:
        key = api_key(cfg.api_key_env)
    except EngineError as exc:
        return str(exc)
    served: list[str] | None = None
    client = openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=PROBE_RETRIES,
                           timeout=openai.Timeout(cfg.timeout_s, connect=CONNECT_TIMEOUT_S))
    try:
        try:
            served = [m.id for m in client.models.list()]
        except (openai.NotFoundError, openai.APIResponseValidationError):
            pass  # no model list here: the chat completion decides
        if served and cfg.model in served:
            return None
        client.chat.completions.create(model=cfg.model, messages=[{"role": "user", "content": "Say OK."}],
                                       max_tokens=1)
        return None
    except openai.APIConnectionError as exc:  # refused, DNS, TLS, or no answer within the timeout
        cause = exc.__cause__
        return f"cannot connect ({type(cause).__name__}: {cause})" if cause else f"cannot connect ({exc})"
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        env = f" from ${cfg.api_key_env}" if cfg.api_key_env else " (none set: engine api_key_env names its variable)"
        return f"refuses the API key{env}: HTTP {exc.status_code}: {exc.message}"
    except openai.NotFoundError as exc:
        listed = f"; its models: {', '.join(served[:10])}" if served else ""
        return (f"answers 404 to a chat completion of model '{cfg.model}' ({exc.message}): a model it does not "
                f"serve, or a wrong base_url (it usually ends in /v1){listed}")
    except openai.InternalServerError as exc:
        return f"answers HTTP {exc.status_code}: {exc.message}"
    except openai.APIStatusError:
        return None  # it answered: what a one-token call is refused for says nothing about real calls
    finally:
        client.close()
