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
    """Ray cluster to join ('auto', 'ray://host:10001'); default: RAY_ADDRESS if set (as under
    `ray job submit`), else a new local Ray instance."""

    num_cpus: int | None = Field(default=None, ge=1)
    """CPUs of a new local Ray instance (ignored when joining a cluster); default: all."""

    namespace: str = "aloe-ray"
    """Ray namespace of the job's named actors."""
