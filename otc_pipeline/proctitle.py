"""Keep a ``--database-url`` password out of this process's command line.

Anyone on the machine can read a process's command line (``ps``,
``/proc/<pid>/cmdline``) for as long as it runs; its environment
(``OTC_DATABASE_URL``) and ``~/.pgpass`` are readable by the same user only.
:func:`hide_password` rewrites the command line with everything between ``//``
and the last ``@`` of the URL masked, as the first thing ``otc`` does: the
password is visible only while the interpreter starts (about 0.1 s), which is
why the README recommends the environment or ``~/.pgpass`` instead. Reading
processes are forked from this one and show the masked line too.

No imports beyond the standard library until a password is found: this runs
before the CLI itself is imported.
"""

from __future__ import annotations

import sys

OPTION = "--database-url"


def masked_url_text(text: str) -> str:
    """The URL with everything between ``//`` and the last ``@`` masked (unchanged without '@')."""
    last_at = text.rfind("@")
    if last_at < 0:
        return text
    start = text.find("//")
    if start < 0 or start > last_at:
        return "***" + text[last_at:]
    return text[: start + 2] + "***" + text[last_at:]


def masked_command_line(argv: list[str]) -> list[str] | None:
    """``argv`` with each ``--database-url`` value masked; None when there is nothing to mask."""
    shown = list(argv)
    for index, word in enumerate(argv):
        if word == OPTION and index + 1 < len(argv):
            shown[index + 1] = masked_url_text(argv[index + 1])
        elif word.startswith(OPTION + "="):
            shown[index] = OPTION + "=" + masked_url_text(word[len(OPTION) + 1 :])
    return shown if shown != argv else None


def hide_password() -> None:
    """Rewrite the command line of this process without the ``--database-url`` password."""
    shown = masked_command_line(sys.orig_argv)
    if shown is None:
        return
    import setproctitle  # only a command line that carries a password pays for it

    setproctitle.setproctitle(" ".join(shown))
