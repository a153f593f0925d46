"""Type stubs for skv (the classes and functions live in the compiled skv._skv)."""
from typing import Any, List, Optional, Sequence, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

class CompiledConfig(TypedDict):
    key_bits: int
    value_bits: int
    head_dim: int
    residual: int
    rotate_keys: bool
    sinks: int
    clip: bool

class KVCache:
    """A quantized KV cache for one sequence (one layer); see help(skv.KVCache)."""

    def __init__(
        self,
        key_bits: int,
        value_bits: int,
        head_dim: int = 128,
        *,
        num_kv_heads: int,
        max_tokens: int,
        residual: Optional[int] = None,
        rotate_keys: Optional[bool] = None,
        sinks: Optional[int] = None,
        clip: Optional[bool] = None,
    ) -> None: ...
    def append(self, k: Any, v: Any) -> None:
        """k, v: [n, num_kv_heads, head_dim] float32 or float16 arrays (numpy, DLPack, buffer)."""
    def decode(self, q: Any, scale: Optional[float] = None, num_threads: int = 0) -> npt.NDArray[np.float32]:
        """q [num_q_heads, head_dim] float32 -> [num_q_heads, head_dim] float32."""
    def attention(self, q: Any, scale: Optional[float] = None, num_threads: int = 0) -> npt.NDArray[np.float32]:
        """q [n, num_q_heads, head_dim] float32 (the last n tokens' queries, causal) -> same shape."""
    def clear(self) -> None: ...
    def page_bytes(self) -> npt.NDArray[np.uint8]: ...
    def full_precision(self) -> npt.NDArray[np.float32]: ...
    def __len__(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def reserved_bytes(self) -> int: ...
    @property
    def bits_per_element(self) -> float: ...
    @property
    def key_bits(self) -> int: ...
    @property
    def value_bits(self) -> int: ...
    @property
    def head_dim(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def residual(self) -> int: ...
    @property
    def rotate_keys(self) -> bool: ...
    @property
    def sinks(self) -> int: ...
    @property
    def clip(self) -> bool: ...
    @property
    def sink_size(self) -> int: ...
    @property
    def quantized_size(self) -> int: ...
    @property
    def residual_size(self) -> int: ...
    @property
    def default_scale(self) -> float: ...

def decode_batch(
    caches: Sequence[KVCache], q: Any, scale: Optional[float] = None, num_threads: int = 0
) -> npt.NDArray[np.float32]:
    """q [batch, num_q_heads, head_dim] float32 -> [batch, num_q_heads, head_dim] float32."""

def compiled() -> List[CompiledConfig]: ...
