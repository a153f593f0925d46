"""Type stubs for skv (the classes and functions live in the compiled skv._skv)."""
from typing import Any, List, Optional, Sequence, Tuple, TypedDict

import numpy as np
import numpy.typing as npt

__version__: str

class CompiledConfig(TypedDict):
    key_bits: int
    value_bits: int
    head_dim: int
    residual: int
    rotate_keys: bool
    rotate_values: bool
    sinks: int
    clip: bool
    lloyd_max_values: bool
    fp16_ring: bool
    int8_ring: bool

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
        rotate_values: Optional[bool] = None,
        sinks: Optional[int] = None,
        clip: Optional[bool] = None,
        lloyd_max_values: Optional[bool] = None,
        fp16_ring: Optional[bool] = None,
        int8_ring: Optional[bool] = None,
        window: int = 0,
        max_chunk: int = 0,
        rollback: int = 0,
        keep_sinks: bool = False,
        rope_frequencies: Optional[Sequence[float]] = None,
    ) -> None: ...
    def append(self, k: Any, v: Any) -> None:
        """k, v: [n, num_kv_heads, head_dim] float32, float16 or bfloat16 arrays (numpy, torch, DLPack)."""
    def can_truncate(self, n: int) -> bool:
        """Whether truncate(n) would succeed."""
    def truncate(self, n: int) -> None:
        """Forgets the tokens after the first n."""
    def decode(self, q: Any, scale: Optional[float] = None, num_threads: int = 0, out: Any = None) -> Any:
        """q [num_q_heads, head_dim] -> the same shape and dtype (a torch tensor for torch queries)."""
    def attention(self, q: Any, scale: Optional[float] = None, num_threads: int = 0, out: Any = None) -> Any:
        """q [n, num_q_heads, head_dim] (the last n tokens' queries, causal) -> the same shape and dtype."""
    def copy(self) -> "KVCache": ...
    def __copy__(self) -> "KVCache": ...
    def dequantize(self) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(keys, values) float32 [len, num_kv_heads, head_dim] as attention sees them."""
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
    def value_group(self) -> int: ...
    @property
    def page_size(self) -> int: ...
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
    def rotate_values(self) -> bool: ...
    @property
    def lloyd_max_values(self) -> bool: ...
    @property
    def fp16_ring(self) -> bool: ...
    @property
    def int8_ring(self) -> bool: ...
    @property
    def pre_rope_keys(self) -> bool: ...
    @property
    def rope_frequencies(self) -> Optional[list[float]]: ...
    @property
    def sink_size(self) -> int: ...
    @property
    def quantized_size(self) -> int: ...
    @property
    def residual_size(self) -> int: ...
    @property
    def default_scale(self) -> float: ...
    @property
    def window(self) -> int: ...
    @property
    def max_chunk(self) -> int: ...
    @property
    def rollback(self) -> int: ...
    @property
    def keep_sinks(self) -> bool: ...

def decode_batch(
    caches: Sequence[KVCache], q: Any, scale: Optional[float] = None, num_threads: int = 0, out: Any = None
) -> Any:
    """q [batch, num_q_heads, head_dim] -> the same shape and dtype."""

def compiled() -> List[CompiledConfig]: ...
