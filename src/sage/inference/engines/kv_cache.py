"""A key/value cache that appends in place.

transformers' ``DynamicLayer`` appends each decoded token with ``torch.cat``, copying the whole
cache of every layer at every step: at batch 8 and ~500 tokens of context that copying was 40%
of a CPU decoding step. :class:`GrowingLayer` keeps keys and values in buffers with spare room
(doubling when full) and hands the model views of the filled part.

The engine still edits ``layer.keys`` / ``layer.values`` directly when it merges or prunes
batches; the layer notices the replacement at its next ``update`` and re-buffers once.
"""

from __future__ import annotations

from typing import Any

from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingLayer", "new_cache"]


class GrowingLayer(DynamicLayer):  # type: ignore[misc]  # transformers is typed as Any
    """A ``DynamicLayer`` whose appends write into preallocated room instead of copying."""

    _MIN_ROOM = 64
    keys: Any
    values: Any

    def lazy_initialization(self, key_states: Any, value_states: Any, *args: Any) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_buffer: Any = None
        self._value_buffer: Any = None
        self._key_view: Any = None
        self._length = 0

    def update(
        self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, Any]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        added = key_states.shape[-2]
        if self._key_buffer is None or self.keys is not self._key_view:
            # first update, or the engine replaced keys/values (merge, prune): re-buffer them
            keys: Any = self.keys
            held = keys is not None and keys.numel() > 0
            self._length = keys.shape[-2] if held else 0
            self._allocate(key_states, added, keys if held else None, self.values)
        elif self._length + added > self._key_buffer.shape[-2]:
            self._allocate(key_states, added, self.keys, self.values)
        end = self._length + added
        self._key_buffer[:, :, self._length : end] = key_states
        self._value_buffer[:, :, self._length : end] = value_states
        self._length = end
        self.keys = self._key_view = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def _allocate(self, like: Any, added: int, keys: Any, values: Any) -> None:
        batch, heads, _, dim = like.shape
        room = max(self._MIN_ROOM, 2 * (self._length + added))
        key_buffer = like.new_empty((batch, heads, room, dim))
        value_buffer = like.new_empty((batch, heads, room, dim))
        if keys is not None and self._length:
            key_buffer[:, :, : self._length] = keys
            value_buffer[:, :, : self._length] = values
        self._key_buffer, self._value_buffer = key_buffer, value_buffer


def new_cache() -> DynamicCache:
    """An empty cache whose layers are :class:`GrowingLayer`."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache
