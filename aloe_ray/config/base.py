"""Shared pieces of every job config: strict models, storage and Ray settings."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class StorageConfig(StrictModel):
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store (MinIO, Ceph, moto); default: AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL from the environment, else AWS itself. Credentials follow the AWS chain."""

    s3_region: str | None = None
    """Region for s3:// URIs; default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1."""


class RayConfig(StrictModel):
    address: str | None = None
    """Ray cluster to join ('auto', 'host:6379', 'ray://host:10001'); default: RAY_ADDRESS if set
    (as under `ray job submit`), else a cluster started on this machine with `ray start`, else a
    new local Ray instance; 'local': always a new local instance."""

    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of a new local Ray instance (ignored when joining a cluster); default: all."""

    namespace: str = "aloe-ray"
    """Ray namespace of the job's named actors."""

    def init_kwargs(self) -> dict:
        """`ray.init` arguments. Ray joins `address`, else RAY_ADDRESS, else a cluster started on
        this machine with `ray start` (its own lookup); only a new local instance takes
        `num_cpus` (Ray refuses it when joining). 'local' always starts a new instance."""
        from ray._private.services import canonicalize_bootstrap_address

        joining = self.address != "local" and canonicalize_bootstrap_address(self.address) is not None
        return {"address": self.address, "namespace": self.namespace, "log_to_driver": True,
                **({} if joining else {"num_cpus": self.num_cpus})}
