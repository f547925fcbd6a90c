"""Undecodable images: a handful are skipped and counted; past a threshold the job fails,
naming the first few.

Images are decoded in DataLoader worker processes, so the counts live in shared memory
that every worker of a rank writes (made before the workers start, inherited by them).
The workers never raise for a bad image; the training loop calls `check()` in the main
process (cheap: two shared integers), which raises TooManyBadImages once more than
`tolerated` images are bad *and* they are more than `max_fraction` of those decoded.
"""

from __future__ import annotations

import multiprocessing

from container import ConfigError

EXAMPLES = 5
EXAMPLE_BYTES = 2048


class TooManyBadImages(ConfigError):
    """More undecodable images than the job tolerates; the message names the first few."""


class BadImages:
    def __init__(self, max_fraction: float, tolerated: int = 10):
        self.max_fraction = max_fraction
        self.tolerated = tolerated
        context = multiprocessing.get_context()
        self._bad = context.Value("q", 0)
        self._seen = context.Value("q", 0)
        self._examples = context.Array("c", EXAMPLE_BYTES)  # "where: reason" lines, the first EXAMPLES

    def record_ok(self) -> None:
        with self._seen.get_lock():
            self._seen.value += 1

    def record_bad(self, where: str, reason) -> None:
        with self._seen.get_lock():
            self._seen.value += 1
        with self._bad.get_lock():
            self._bad.value += 1
            if self._bad.value <= EXAMPLES:
                line = f"{where}: {reason}".replace("\n", " ")[:300].encode("utf-8", "replace") + b"\n"
                current = self._examples.value
                self._examples.value = (current + line)[: EXAMPLE_BYTES - 1]

    @property
    def count(self) -> int:
        return self._bad.value

    @property
    def seen(self) -> int:
        return self._seen.value

    def examples(self) -> list[str]:
        return [line for line in self._examples.value.decode("utf-8", "replace").splitlines() if line]

    def exceeded(self) -> bool:
        bad, seen = self.count, self.seen
        return bad > self.tolerated and bad > self.max_fraction * seen

    def check(self) -> None:
        if self.exceeded():
            raise TooManyBadImages(
                f"{self.count} of {self.seen} images could not be decoded, more than max_bad_fraction={self.max_fraction} "
                f"(after the first {self.tolerated}); first: {'; '.join(self.examples())}"
            )

    def summary(self) -> dict:
        """For metrics.json: how many were skipped, of how many, and the first few."""
        return {"undecodable_images": self.count, "images_decoded": self.seen, "undecodable_examples": self.examples()}
