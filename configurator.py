"""
Settings the nanoGPT way: a script's settings are plain globals at its top, and the command line overrides them
with config files (`config/train_wiki.py`, plain Python assignments) and `--key=value` pairs, applied left to
right; a bare `--key` sets a True/False setting to True. Unlike a bare exec, each override is checked: an unknown
key or a value of the wrong type stops the run with a message that names it, so a typo never silently trains the
wrong model; only nanoGPT's settings that mean nothing here (NANOGPT_ONLY) are accepted, each with a note on what
happens instead, so that nanoGPT's own config files run. `--help` prints the settings with their defaults and
exits; given the script's file, each setting with its comment from the script, under the comment lines that head
its group.

    configure(globals(), sys.argv[1:])
"""

import difflib
import re
import sys
import traceback
from ast import literal_eval


class ConfigError(ValueError):
    pass


# Settings of nanoGPT's train.py and sample.py with no counterpart in the script being configured: what happens here
# instead. A name the script has is its own setting; nanoGPT's with the same name mean the same.
NANOGPT_ONLY = {
    "always_save_checkpoint": "every evaluation writes out_dir/ckpt.pt here, the latest weights, which "
                              "--init_from=resume continues; --keep_best=True also keeps the best ones in best.pt",
    "backend": "the DDP backend follows the device here: nccl on CUDA, gloo on the CPU",
    "compile": "this script runs the model uncompiled",
}


def configure(settings, args, help_from=None):
    """Apply config files and --key=value overrides from args to the settings dict (a script's globals).
    help_from: the script's path, whose comments --help prints beside each setting."""
    known = {k: v for k, v in settings.items() if is_setting(k, v)}
    noted = set()
    if "--help" in args or "-h" in args:
        print(help_text(known, help_from))
        raise SystemExit(0)
    for arg in args:
        if arg.startswith("--"):
            key, sep, text = arg[2:].partition("=")
            if not sep and not isinstance(known.get(key), bool):
                raise ConfigError(f"expected --key=value, got '{arg}' (a bare --key switches on a True/False "
                                  f"setting)")
            apply(settings, known, key, parse(text) if sep else True, f"'{arg}'", noted)
        else:
            for key, value in read_config_file(arg).items():
                apply(settings, known, key, value, f"config file {arg}", noted)


SETTING_LINE = re.compile(r"^(\w+) = .*?(?:  # (.*))?$")


def help_text(known, script=None):
    """The settings with their defaults; with the script, each with its comment and grouped as the script groups
    them: comment lines above a setting that has no comment of its own are its help, above one that has, a group's
    heading."""
    lines = ["settings and their defaults; override them with config files and --key=value, left to right:"]
    comments, help_of, heading_of = [], {}, {}
    for line in open(script).read().splitlines() if script else []:
        match = SETTING_LINE.match(line)
        if line.startswith("# ") and not line.startswith("# ---"):
            comments.append(line[2:])
        elif match and match.group(1) in known:
            key, own = match.groups()
            help_of[key] = own or " ".join(comments)
            if own and comments:
                heading_of[key] = comments
            comments = []
        else:
            comments = []
    for key, value in known.items():
        lines += ["", *heading_of[key]] if key in heading_of else []
        lines.append(f"  --{key}={value!r}" + (f"  {help_of[key]}" if help_of.get(key) else ""))
    return "\n".join(lines)


def is_setting(key, value):
    return not key.startswith("_") and isinstance(value, (int, float, bool, str, type(None), tuple))


def parse(text):
    """'3e-4' -> 0.0003, 'True' -> True, 'None' -> None; anything that is not a Python literal stays a string."""
    try:
        return literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_config_file(path):
    try:
        with open(path) as f:
            source = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    namespace = {}
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg}: fix the file (plain Python assignments)") \
            from None
    except Exception as e:  # the file is Python and may raise anything; the line that raised is the file's own
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(e.__traceback__))
                     if frame.filename == path), "?")
        raise ConfigError(f"config file {path}, line {line}: {type(e).__name__}: {e}: fix the file") from None
    return {k: v for k, v in namespace.items() if not k.startswith("_") and is_setting(k, v)}


def apply(settings, known, key, value, origin, noted):
    if key not in known and key in NANOGPT_ONLY:
        if key not in noted:  # once, however many files and flags set it
            print(f"note: {key} (from {origin}) is nanoGPT's setting, not one of this script's: "
                  f"{NANOGPT_ONLY[key]}", file=sys.stderr)
            noted.add(key)
        return
    if key not in known:
        close = difflib.get_close_matches(key, known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see the settings at the top of the script"
        raise ConfigError(f"unknown setting '{key}' (from {origin}){hint}")
    settings[key] = check_type(key, known[key], value, origin)


def check_type(key, default, value, origin):
    """The override must have the default's type; an int may stand for a float. A setting whose default is None
    takes any value."""
    if default is None or type(value) is type(default):
        return value
    if isinstance(default, float) and type(value) is int:
        return float(value)
    raise ConfigError(f"setting '{key}' (from {origin}) must be of type {type(default).__name__} like its "
                      f"default {default!r}, got {value!r} of type {type(value).__name__}")

