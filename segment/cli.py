"""Small pieces the command-line scripts share: help layout and checked argument types."""

import argparse

__all__ = [
    "HelpFormatter", "choice_list", "non_negative", "part_share", "positive", "probability",
    "scale_list",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, keeps the epilog's line breaks, and leaves out empty defaults (flags)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.default == []:
            return action.help
        return super()._get_help_string(action)


def probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1], got {text}")
    return value


def part_share(text):
    """A share of an image's pixels in [0, 1), e.g. `0.01` (`segment.inference.check_min_part`)."""
    from segment.inference import check_min_part  # only the scripts that predict need it

    try:
        return check_min_part(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a share of the image's pixels in [0, 1), such as 0.01, got {text!r}"
        ) from None


def non_negative(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def scale_list(text):
    """Comma-separated positive factors, e.g. `0.75,1,1.25` (`segment.inference.check_scales`)."""
    from segment.inference import check_scales  # only the scripts that predict need it

    try:
        return list(check_scales(part for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive factors such as 0.75,1,1.25, got {text!r}"
        ) from None


def choice_list(choices, *, what, allow_none=False):
    """An argparse type for comma-separated names from `choices` (`"none"` -> [] if allowed)."""

    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        if allow_none and names == ["none"]:
            return []
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return names

    return parse
