"""Entry point of `protosaga-view`.

The viewer is not built yet (it is the fourth milestone, after training, association and prototypes).
Until then the command says so and exits with an error instead of pretending to work.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "protosaga-view: the viewer is not available yet in this version of ProtoSaGa "
        "(it needs trained scenes, which later milestones add).",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
