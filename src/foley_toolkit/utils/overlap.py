"""Chunked processing of a stream with exact overlap: a local function (a convolutional vocoder, a filter) applied
chunk by chunk with enough context on each side that the joined output equals one call on the whole stream.

Used by the vocoder's optional time chunking (`MMAudioVocoder.chunk_frames`) and by long-form generation, which
vocodes and filters its output as it is produced.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


__all__ = ["OverlapProcessor", "process_in_chunks"]


class OverlapProcessor:
    r"""
    Applies a local function to a stream along its last axis, chunk by chunk with context on each side.

    `function` maps an input `(..., n)` to an output `(..., n * scale)` in which output position `j` depends only on
    inputs within `margin` of `j // scale` (a convolutional vocoder, a filter). Each chunk of `chunk` input positions
    is processed with up to `margin` positions of context on either side (less at the stream's ends, exactly as the
    whole stream would see them) and the context's output is cut away, so the concatenated outputs equal
    `function(whole stream)` while at most `chunk + 2 * margin` positions (plus one pushed block) are held.

    Args:
        function (`Callable[[torch.Tensor], torch.Tensor]`): The local function.
        chunk (`int`): Input positions per call (>= 1).
        margin (`int`): Context on each side (>= 0); at least the function's receptive radius for exactness.
        scale (`int`, defaults to 1): Output positions per input position.
    """

    def __init__(self, function: Callable[[torch.Tensor], torch.Tensor], chunk: int, margin: int, scale: int = 1):
        if chunk < 1 or margin < 0 or scale < 1:
            raise ValueError(f"need `chunk` >= 1, `margin` >= 0, `scale` >= 1; got {chunk}, {margin}, {scale}.")
        self.function, self.chunk, self.margin, self.scale = function, int(chunk), int(margin), int(scale)
        self._buffer: torch.Tensor | None = None
        self._buffer_start = 0  # stream position of the buffer's first element
        self._done = 0  # stream positions already processed
        self.max_buffered = 0  # most input positions held at once (for tests and benchmarks)

    def _available(self) -> int:
        return 0 if self._buffer is None else self._buffer_start + self._buffer.shape[-1]

    def push(self, block: torch.Tensor) -> list[torch.Tensor]:
        """Add `block` `(..., n)` to the stream; return the outputs now final."""
        if block.shape[-1] == 0:
            return []
        self._buffer = block if self._buffer is None else torch.cat([self._buffer, block], dim=-1)
        self.max_buffered = max(self.max_buffered, self._buffer.shape[-1])
        outputs = []
        while self._available() >= self._done + self.chunk + self.margin:
            outputs.append(self._process(self._done + self.chunk))
        return outputs

    def finish(self) -> list[torch.Tensor]:
        """Process what is left (the stream ended); the processor can not be pushed to afterwards."""
        outputs = []
        while self._done < self._available():
            outputs.append(self._process(min(self._done + self.chunk, self._available())))
        self._buffer = None
        return outputs

    def _process(self, end: int) -> torch.Tensor:
        low = max(self._done - self.margin, self._buffer_start)
        high = min(end + self.margin, self._available())
        output = self.function(self._buffer[..., low - self._buffer_start : high - self._buffer_start])
        output = output[..., (self._done - low) * self.scale : (end - low) * self.scale]
        self._done = end
        # Keep only what later chunks can still need as context.
        keep_from = max(self._done - self.margin, self._buffer_start)
        self._buffer = self._buffer[..., keep_from - self._buffer_start :]
        self._buffer_start = keep_from
        return output


def process_in_chunks(
    function: Callable[[torch.Tensor], torch.Tensor], stream: torch.Tensor, chunk: int, margin: int, scale: int = 1
) -> torch.Tensor:
    """`function(stream)` computed by an [`OverlapProcessor`] in chunks of `chunk` positions with `margin` context:
    equal to the one call when `margin` covers the function's receptive radius."""
    processor = OverlapProcessor(function, chunk, margin, scale)
    return torch.cat([*processor.push(stream), *processor.finish()], dim=-1)
