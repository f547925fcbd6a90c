"""Per-request options, passed the SageMaker way: custom attributes.

`invoke_endpoint(..., CustomAttributes="explain=gradcam")` (boto3; the SageMaker SDK's
`predict(..., custom_attributes=...)` / `initial_args={"CustomAttributes": ...}`) reaches
the container as the X-Amzn-SageMaker-Custom-Attributes header, verbatim: SageMaker
treats it as opaque text of at most 1024 visible US-ASCII characters. This image reads
it as `key=value` entries separated by `,` or `;` (whitespace around them ignored).

`RequestOptions` are the keys our classifier answers to (docs/serving.md, "Per-request
options"). They are parsed strictly: a bad value, a key given twice or a near-miss of
one of ours (`explian`) is a ConfigError naming it, which the server answers with 400.
Any other entry (a trace id, keys of your own) is left alone: a user's inference.py
sees the whole text in its context.

Batch transform sends no per-request header, so SM_VISION_CUSTOM_ATTRIBUTES
(ServeConfig.custom_attributes) gives the same text for every request that sends none;
a request's own header wins key by key. No torch here: ServeConfig checks that setting
at start-up with these functions.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from container.parse import ConfigError, parse_bool, parse_float

HEADER = "X-Amzn-SageMaker-Custom-Attributes"
MAX_LENGTH = 1024  # InvokeEndpoint's limit on CustomAttributes, both ways
SEPARATORS = re.compile(r"[,;]")

EXPLAIN_METHODS = ("gradcam",)
OUTPUTS = ("prediction", "embedding")
TTA_MODES = ("flip",)
OFF = "none"


def check_text(text: str, source: str) -> str:
    """`text` if it fits the API's rule: at most 1024 visible US-ASCII characters."""
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{source}: {len(text)} characters; custom attributes hold at most {MAX_LENGTH}")
    if not all(" " <= char <= "~" for char in text):
        raise ConfigError(f"{source}: custom attributes are visible US-ASCII characters only")
    return text


def parse_pairs(text: str | None, source: str = HEADER) -> list[tuple[str, str]]:
    """The `key=value` entries of a custom-attributes text in order, keys as written;
    entries without `=` (an opaque token such as a trace id) are not pairs."""
    if text is None:
        return []
    pairs = []
    for entry in SEPARATORS.split(check_text(text, source)):
        key, sep, value = entry.partition("=")
        if sep and key.strip():
            pairs.append((key.strip(), value.strip()))
    return pairs


def _choice(value: str, key: str, choices: tuple[str, ...]) -> str | None:
    """One of `choices`, or None for `none`."""
    lowered = value.lower()
    if lowered == OFF:
        return None
    if lowered not in choices:
        raise ConfigError(f"{key}={value!r}: choose {' or '.join(choices + (OFF,))}")
    return lowered


def _output(value: str, key: str) -> str:
    lowered = value.lower()
    if lowered not in OUTPUTS:
        raise ConfigError(f"{key}={value!r}: choose {' or '.join(OUTPUTS)}")
    return lowered


def _threshold(value: str, key: str) -> float | None:
    threshold = parse_float(value, key, minimum=0.0, maximum=1.0)
    return threshold or None  # 0: no answer is below it, i.e. never abstain


@dataclass(frozen=True)
class RequestOptions:
    """What one request asks of our classifier. The defaults are today's plain answer."""

    explain: str | None = None  # "gradcam": a Grad-CAM heatmap of the top class
    overlay: bool = True  # with explain: the heatmap laid over the input, as a base64 PNG
    output: str = "prediction"  # "embedding": the penultimate-layer vector too
    tta: str | None = None  # "flip": probabilities averaged with the mirrored image's
    abstain_below: float | None = None  # top-1 probability below it: "abstained": true
    ood: bool = False  # an out-of-distribution score against the artifact's monitoring baseline

    @property
    def plain_forward(self) -> bool:
        """The forward is today's: nothing asked that changes what the model computes."""
        return self.explain is None and self.tta is None and not self.extra_fields

    @property
    def extra_fields(self) -> bool:
        """The answer carries more than the prediction (explanation, embedding, OOD score)."""
        return self.explain is not None or self.output == "embedding" or self.ood

    @property
    def features(self) -> bool:
        """The penultimate-layer features are needed (an embedding or an OOD score)."""
        return self.output == "embedding" or self.ood

    def updated(self, pairs: Iterable[tuple[str, str]], source: str = HEADER) -> RequestOptions:
        """These options with `pairs` (parse_pairs) applied on top, checked."""
        parsers = {
            "explain": lambda value, key: _choice(value, key, EXPLAIN_METHODS),
            "overlay": parse_bool,
            "output": _output,
            "tta": lambda value, key: _choice(value, key, TTA_MODES),
            "abstain_below": _threshold,
            "ood": parse_bool,
        }
        changes = {}
        for key, value in pairs:
            name = key.lower()
            if name in changes:
                raise ConfigError(f"{source}: {name} is given twice")
            if name in parsers:
                try:
                    changes[name] = parsers[name](value, name)
                except ConfigError as err:
                    raise ConfigError(f"{source}: {err}") from None
            elif close := difflib.get_close_matches(name, parsers, n=1, cutoff=0.8):
                raise ConfigError(f"{source}: unknown key {key!r}; did you mean {close[0]!r}?")
        options = dataclasses.replace(self, **changes)
        if options.tta is not None and options.extra_fields:
            raise ConfigError(
                f"{source}: tta=flip averages probabilities only; it cannot be combined with explain, output=embedding or ood"
            )
        return options


def request_defaults(text: str | None, source: str) -> RequestOptions:
    """The options a job-wide text (SM_VISION_CUSTOM_ATTRIBUTES) sets for every request."""
    return RequestOptions().updated(parse_pairs(text, source), source)
