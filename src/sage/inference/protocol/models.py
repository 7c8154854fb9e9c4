"""``GET /v1/models``: the models served."""

from __future__ import annotations

import logging
import time
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)

logger = logging.getLogger(__name__)


class ModelCard(BaseModel):
    """One served model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sage"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
