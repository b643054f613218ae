"""`maskdiff presets`: the named configs, or every value of one."""

from __future__ import annotations

from dataclasses import dataclass

from maskdiff.cli.common import Commands, Parser, set_handler


@dataclass(frozen=True)
class PresetsArgs:
    """The flags of `maskdiff presets`."""

    show: str | None


def cmd_presets(args: PresetsArgs) -> int:
    from maskdiff.presets import PRESETS, get_preset, parameter_count

    if args.show is None:
        width = max(map(len, PRESETS))
        counted = "all weights but the input embedding, output layer included; text: the built-in corpus's characters"
        print(f"{'preset':{width}s}  {'params':>7s}  ({counted})")
        for name, fn in PRESETS.items():
            print(f"{name:{width}s}  {parameter_count(fn()) / 1e6:6.2f}M  {(fn.__doc__ or '').strip()}")
        return 0
    for name, section in get_preset(args.show).sections().items():
        for key, doc in section.docs().items():
            print(f"{name}.{key} = {getattr(section, key)!r}  # {doc}")
    show_sampler_options()
    return 0


def show_sampler_options() -> None:
    """The sampler's options with their defaults, from the declarations the sample flags and HTTP fields come from."""
    from maskdiff.sampling.flags import flag_of, help_text
    from maskdiff.sampling.settings import every_option

    print("# sampling: `maskdiff sample` flags, HTTP fields by the same names with underscores")
    for item, rules in every_option():
        doc = help_text(item, rules).replace("%%", "%").removesuffix(f" (default {item.option.default})")
        print(f"{flag_of(item.name)} = {item.option.default!r}  # {doc}")


def add_presets_parser(sub: Commands) -> None:
    sub.add_command("presets", "list named configs", fill_presets_parser)


def fill_presets_parser(p: Parser) -> None:
    p.description = "List the presets, or show every value of one."
    p.add_argument("--show", metavar="NAME", help="print every config key of preset NAME with its value and meaning, then the sampler's options")
    set_handler(p, PresetsArgs, cmd_presets)
