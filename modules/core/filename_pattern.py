"""A1111's file and folder name patterns: `[tag]`s replaced by what a picture was made with.

The options `samples_filename_pattern` ("[seed]-[prompt_spaces]"), `directories_filename_pattern`
("[date]") and `grid_zip_filename_pattern` use them. A tag may take arguments in angle brackets
(`[datetime<%Y%m%d><Asia/Tokyo>]`, `[prompt_hash<4>]`, `[hasprompt<red|nored><blue>]`), tags are
case-insensitive, and an unknown tag (or one whose value is unknown: `[user]` without a user) is
left as written. A few tags drop themselves *and the text before them* when they say nothing
(`[batch_number]` with a batch of one, `-[seed_last]` for a single picture), as in A1111.

Pure: every value comes in as a `NameValues`; nothing is read from options or the clock here
unless the caller leaves `now`/`today` empty.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

# A1111 1.10: these become "_" (--unix-filenames-sanitization: only "/"), names are cut to
# --filenames-max-length (128), leading spaces and trailing spaces/dots are dropped
INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
UNIX_INVALID_FILENAME_CHARS = "/"
MAX_FILENAME_PART_LENGTH = 128
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"

_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
_TAG = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)", re.DOTALL)
_TAG_ARG = re.compile(r"(.*)<([^>]*)>$", re.DOTALL)


class _Skip:
    """A tag with nothing to say: it and the literal text just before it are dropped."""

    def __repr__(self) -> str:
        return "SKIP"


SKIP = _Skip()


def sanitize_filename_part(text: str | None, replace_spaces: bool = True, *,
                           max_length: int = MAX_FILENAME_PART_LENGTH,
                           invalid_chars: str = INVALID_FILENAME_CHARS) -> str | None:
    """A1111's `sanitize_filename_part`: forbidden characters to "_", spaces too unless
    `replace_spaces` is False, leading spaces off, cut to `max_length`, trailing spaces/dots off."""
    if text is None:
        return None
    text = str(text)
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in invalid_chars})
    text = text.lstrip(" ")[:max_length]
    return text.rstrip(" .")


@dataclass
class NameValues:
    """What a file or folder name may use: one picture (or the grid) of one job."""

    seed: int | None = None
    prompt: str | None = None  # this picture's prompt
    negative_prompt: str = ""  # the job's negative prompt (A1111's p.negative_prompt)
    job_prompt: str | None = None  # the job's prompt (A1111's p.prompt, for [full_prompt_hash]); None: `prompt`
    all_seeds: Sequence[int] = ()  # the job's seeds ([seed_first], [seed_last])
    styles: Sequence[str] = ()  # the style names applied
    style_prompts: Sequence[str] = ()  # their prompt texts ([prompt_no_styles] takes them out again)
    steps: int | None = None
    cfg_scale: float | None = None
    width: int | None = None  # used when there is no `image`
    height: int | None = None
    sampler: str | None = None
    scheduler: str | None = None  # the schedule's label as A1111 names it in file names ("Karras", "Automatic")
    model_hash: str | None = None
    model_name: str | None = None
    vae_file: str | None = None  # the external VAE's file name; None: "NoneType", as A1111 writes
    clip_skip: int | None = None
    denoising_strength: float | None = None
    user: str | None = None
    job_timestamp: str | None = None
    batch_size: int = 1
    batch_index: int = 0  # the picture's place in its batch
    n_iter: int = 1
    iteration: int = 0  # the batch's number
    image: Any = None  # the PIL picture ([width], [height], [image_hash])
    basename: str = ""
    zip: bool = False
    max_prompt_words: int = 8  # directories_max_prompt_words
    today: datetime.date | None = None  # [date]; None: today
    now: datetime.datetime | None = None  # [datetime]; None: now
    max_length: int = MAX_FILENAME_PART_LENGTH
    invalid_chars: str = INVALID_FILENAME_CHARS


def _hash(text: str, args: tuple, default: int | None) -> str:
    length = int(args[0]) if args and args[0] != "" else default
    return hashlib.sha256(text.encode()).hexdigest()[0:length]


def _zone(name: str):
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name)
    except Exception:  # unknown zone, or no time zone data: the system's local time (A1111)
        return None


class _Tags:
    """The value of each tag for one `NameValues`; None: unknown (the tag stays as written)."""

    def __init__(self, v: NameValues):
        self.v = v

    def clean(self, text, replace_spaces: bool = True):
        return sanitize_filename_part(text, replace_spaces, max_length=self.v.max_length,
                                      invalid_chars=self.v.invalid_chars)

    def prompt_no_styles(self):
        v = self.v
        if v.prompt is None:
            return None
        text = v.prompt
        for style in v.style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
            text = text.replace(style, "").strip().strip(",").strip()
        return self.clean(text, replace_spaces=False)

    def prompt_words(self):
        words = [w for w in _NONLETTERS.split(self.v.prompt or "") if w] or ["empty"]
        return self.clean(" ".join(words[0:max(0, int(self.v.max_prompt_words))]), replace_spaces=False)

    def datetime(self, *args):
        v = self.v
        now = v.now or datetime.datetime.now()
        fmt = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
        when = now.astimezone(_zone(args[1]) if len(args) > 1 else None)
        try:
            text = when.strftime(fmt)
        except (ValueError, TypeError):
            text = when.strftime(DEFAULT_TIME_FORMAT)
        return self.clean(text, replace_spaces=False)

    def hasprompt(self, *args):
        if self.v.prompt is None:
            return None
        lower = self.v.prompt.lower()
        out = ""
        for arg in args:
            if arg == "":
                continue
            expected, _, default = arg.partition("|")
            expected = expected.lower()
            out += expected if expected in lower else default
        return self.clean(out)

    def vae_filename(self):
        if not self.v.vae_file:
            return "NoneType"
        parts = str(self.v.vae_file).replace("\\", "/").rsplit("/", 1)[-1].split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]

    def table(self) -> dict[str, Callable[..., Any]]:
        v = self.v
        single = v.batch_size == 1
        seeds = list(v.all_seeds) or ([v.seed] if v.seed is not None else [])
        width = v.image.width if v.image is not None else v.width
        height = v.image.height if v.image is not None else v.height
        job_prompt = v.prompt if v.job_prompt is None else v.job_prompt
        return {
            "basename": lambda: v.basename or "img",
            "seed": lambda: v.seed if v.seed is not None else "",
            "seed_first": lambda: v.seed if single else seeds[0],
            "seed_last": lambda: SKIP if single else seeds[-1],
            "steps": lambda: v.steps,
            "cfg": lambda: v.cfg_scale,
            "width": lambda: width,
            "height": lambda: height,
            "styles": lambda: self.clean(", ".join(s for s in v.styles if s != "None") or "None", replace_spaces=False),
            "sampler": lambda: self.clean(v.sampler, replace_spaces=False),
            "sampler_scheduler": lambda: (SKIP if v.sampler is None or v.scheduler is None
                                          else self.clean(f"{v.sampler} {v.scheduler}", replace_spaces=False)),
            "scheduler": lambda: SKIP if v.scheduler is None else self.clean(v.scheduler, replace_spaces=False),
            "model_hash": lambda: v.model_hash,
            "model_name": lambda: self.clean(v.model_name, replace_spaces=False),
            "date": lambda: (v.today or datetime.date.today()).isoformat(),
            "datetime": self.datetime,
            "job_timestamp": lambda: v.job_timestamp,
            "prompt_hash": lambda *a: _hash(v.prompt or "", a, 8),
            "negative_prompt_hash": lambda *a: _hash(v.negative_prompt or "", a, 8),
            "full_prompt_hash": lambda *a: _hash(f"{job_prompt} {v.negative_prompt}", a, 8),
            "prompt": lambda: self.clean(v.prompt),
            "prompt_no_styles": self.prompt_no_styles,
            "prompt_spaces": lambda: self.clean(v.prompt, replace_spaces=False),
            "prompt_words": self.prompt_words,
            "batch_number": lambda: SKIP if single or v.zip else v.batch_index + 1,
            "batch_size": lambda: v.batch_size,
            "generation_number": lambda: (SKIP if (v.n_iter == 1 and single) or v.zip
                                          else v.iteration * v.batch_size + v.batch_index + 1),
            "hasprompt": self.hasprompt,
            "clip_skip": lambda: v.clip_skip,
            "denoising": lambda: v.denoising_strength if v.denoising_strength else SKIP,
            "user": lambda: v.user,
            "vae_filename": self.vae_filename,
            "none": lambda: "",  # nothing: the name is the number alone
            "image_hash": lambda *a: (None if v.image is None
                                      else hashlib.sha256(v.image.tobytes()).hexdigest()[0:int(a[0]) if a and a[0] != "" else None]),
        }


TAGS = tuple(_Tags(NameValues()).table())  # the tags known, for documentation and tests


def apply(pattern: str, values: NameValues, extra: Mapping[str, Callable[..., Any]] | None = None) -> str:
    """`pattern` with every known tag replaced by its value (literal text is kept as written).
    `extra`: more tags (lower-case name -> function of the tag's arguments), over the built-in ones."""
    table = {**_Tags(values).table(), **{k.lower(): f for k, f in (extra or {}).items()}}
    out = []
    for match in _TAG.finditer(pattern or ""):
        text, tag = match.groups()
        if tag is None:
            out.append(text)
            continue
        name, args = tag, []
        while (found := _TAG_ARG.match(name)) is not None:
            name, arg = found.groups()
            args.insert(0, arg)
        fun = table.get(name.lower())
        value = None
        if fun is not None:
            try:
                value = fun(*args)
            except Exception:  # a bad argument ([prompt_hash<x>]): the tag stays as written (A1111)
                value = None
        if value is SKIP:
            continue
        out.append(text + (f"[{tag}]" if value is None else str(value)))
    return "".join(out)


def safe_relative(path_text: str) -> str:
    """A folder pattern's result as a path below the output folder: "..", drive and root parts
    dropped (a pattern or a prompt cannot write outside it), trailing spaces and slashes off."""
    parts = [p for p in re.split(r"[\\/]+", path_text.lstrip(" ").rstrip("\\ /")) if p not in ("", ".", "..")]
    parts = [p for p in parts if not re.fullmatch(r"[A-Za-z]:", p)]
    return "/".join(parts)
