"""The man pages in man/: they render without a warning, and they say what the code does.

groff (Debian's groff-base, which tools/ensure-deps installs) renders each page with every
warning on, and mandoc's linter judges it too where mandoc is installed. The pages are written
by hand, so completeness is checked against the code itself: every subcommand and option of
``remus-netbuf``'s parser (walked through argparse's own records), every key of the
configuration (``Config``'s slots, with its default), and every environment variable the
package reads (its constants, and an AST walk of the package for any other read).
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from remus_netbuf import __version__, cli, config, netbuf, request
from remus_netbuf.cli import build_parser
from remus_netbuf.config import Config
from tools.install import MAN_PAGES, MAN_SOURCES

PACKAGE = Path(config.__file__).parent
SETUP_PAGE, CLI_PAGE, CONF_PAGE = "remus-netbuf-setup.8", "remus-netbuf.8", "remus-netbuf.conf.5"
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}  # macros that join their arguments


# --- reading roff -----------------------------------------------------------------------------


def plain(text: str) -> str:
    """Roff text without its escapes: what a reader sees."""
    text = re.sub(r"\\f[BIRP]|\\&|\\c$", "", text)
    for escape, char in ((r"\-", "-"), (r"\(lq", '"'), (r"\(rq", '"'), (r"\(dq", '"')):
        text = text.replace(escape, char)
    return text.replace(r"\(aq", "'").replace(r"\e", "\\")


def line_text(line: str) -> str:
    """A line as text: a font macro's arguments (joined as the macro joins them), or the line."""
    if not line.startswith("."):
        return plain(line)
    macro, _, rest = line[1:].partition(" ")
    args = [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|\S+', rest)]
    return plain(("" if macro in _ALTERNATING else " ").join(args))


class Page:
    """A man page as sections (``.SH``), subsections (``.SS``) and the tags of ``.TP`` lists."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = (MAN_SOURCES / name).read_text()
        self.lines = [ln for ln in self.source.splitlines() if not ln.startswith('.\\"')]

    def part(self, section: str, subsection: str | None = None) -> list[str]:
        """The lines of ``.SH section`` (of its ``.SS subsection`` if given)."""
        found: list[str] = []
        inside = seen = False
        current = ""
        for line in self.lines:
            if line.startswith((".SH ", ".SS ")):
                heading = line_text(line).strip()
                if line.startswith(".SH "):
                    inside = heading == section and subsection is None
                    current = heading
                elif subsection is not None:
                    inside = current == section and heading == subsection
                seen = seen or inside
                continue
            if inside:
                found.append(line)
        assert seen, f"{self.name}: no {section} {subsection or ''}"
        return found

    def headings(self, macro: str) -> list[str]:
        return [line_text(ln).strip() for ln in self.lines if ln.startswith(f".{macro} ")]

    def entries(self, section: str, subsection: str | None = None) -> dict[str, str]:
        """Each ``.TP`` entry of the part: its tag as text -> its paragraph as text."""
        found: dict[str, str] = {}
        lines = self.part(section, subsection)
        for at, line in enumerate(lines):
            if line == ".TP" and at + 1 < len(lines):
                body = []
                for following in lines[at + 2 :]:
                    if following.startswith((".TP", ".PP", ".SH", ".SS", ".IP")):
                        break
                    body.append(line_text(following))
                found[line_text(lines[at + 1]).strip()] = " ".join(body)
        return found

    def text(self, section: str, subsection: str | None = None) -> str:
        return " ".join(line_text(ln) for ln in self.part(section, subsection))


def words(tag: str) -> set[str]:
    """The words of a tag: ``-h, --help`` -> {-h, --help}; ``plug_limit=bytes`` -> {plug_limit,
    bytes}; ``--format table|json|prometheus`` -> {--format, table, json, prometheus}."""
    return {w for w in re.split(r"[\s,=|]+", tag) if w}


# --- the pages as roff ------------------------------------------------------------------------


def test_man_holds_the_pages_install_installs() -> None:
    assert sorted(p.name for p in MAN_SOURCES.iterdir()) == sorted(MAN_PAGES)
    assert set(MAN_PAGES) == {SETUP_PAGE, CLI_PAGE, CONF_PAGE}


@pytest.mark.parametrize("name", MAN_PAGES)
def test_renders_with_groff_without_a_warning(name: str) -> None:
    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("no groff: tools/ensure-deps installs groff-base", pytrace=False)
    done = subprocess.run(
        [groff, "-man", "-ww", "-z", str(MAN_SOURCES / name)], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("name", MAN_PAGES)
def test_passes_mandoc_lint(name: str) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.skip("mandoc is not installed (apt-get install mandoc)")
    done = subprocess.run(
        [mandoc, "-T", "lint", "-W", "all", str(MAN_SOURCES / name)],
        capture_output=True,
        text=True,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("name", MAN_PAGES)
def test_whatis_entry_is_what_mandb_reads(name: str) -> None:
    """lintian's bad-whatis-entry: man-db's lexgrog must find "name - summary" in NAME."""
    lexgrog = shutil.which("lexgrog")
    if lexgrog is None:
        pytest.skip("lexgrog (man-db) is not installed")
    done = subprocess.run([lexgrog, str(MAN_SOURCES / name)], capture_output=True, text=True)
    stem = name.rpartition(".")[0]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith(f'{MAN_SOURCES / name}: "{stem} - '), done.stdout


@pytest.mark.parametrize("name", MAN_PAGES)
def test_title_names_page_section_and_version(name: str) -> None:
    page = Page(name)
    (th,) = [ln for ln in page.lines if ln.startswith(".TH ")]
    title, section, _date, source, _manual = re.findall(r'"[^"]*"|\S+', th[4:])
    stem, _, suffix = name.rpartition(".")
    assert (plain(title), section) == (stem.upper(), suffix)
    assert plain(source.strip('"')) == f"remus-netbuf {__version__}"
    assert page.headings("SH")[:3] == ["NAME", "SYNOPSIS", "DESCRIPTION"]
    assert "SEE ALSO" in page.headings("SH")
    assert page.source.isascii()  # groff reads it without preconv; install writes it as text


# --- remus-netbuf(8): every subcommand and option of the parser --------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_top_level_option_is_in_options() -> None:
    documented = set().union(*map(words, Page(CLI_PAGE).entries("OPTIONS")))
    assert set(options(build_parser())) - documented == set()


def test_every_subcommand_has_its_subsection_with_each_option() -> None:
    page = Page(CLI_PAGE)
    assert page.headings("SS") == list(subcommands())  # each, in the parser's order
    for name, parser in subcommands().items():
        documented = set().union(set(), *map(words, page.entries("COMMANDS", name)))
        for option, action in options(parser).items():
            if isinstance(action, argparse._HelpAction):
                continue  # OPTIONS: "Every command takes it too"
            assert option in documented, f"{name} {option}"
            for choice in action.choices or ():
                assert choice in documented, f"{name} {option} {choice}"


def test_no_option_is_documented_that_the_parser_lacks() -> None:
    page = Page(CLI_PAGE)
    for name, parser in subcommands().items():
        tags = set().union(set(), *map(words, page.entries("COMMANDS", name)))
        stale = {w for w in tags if w.startswith("-")} - set(options(parser))
        assert stale == set(), name


def test_every_plug_action_has_its_entry() -> None:
    documented = {tag.split()[0] for tag in Page(CLI_PAGE).entries("COMMANDS", "plug")}
    assert set(cli.PLUG_ACTIONS) <= documented


def test_the_synopsis_shows_every_subcommand_and_option() -> None:
    synopsis = Page(CLI_PAGE).text("SYNOPSIS")
    for name, parser in subcommands().items():
        assert f"remus-netbuf {name}" in synopsis
        for option, action in options(parser).items():
            if not isinstance(action, argparse._HelpAction):
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", synopsis), option


def test_every_subcommand_takes_help() -> None:
    """What OPTIONS says of -h/--help, for the test above that skips it."""
    for parser in subcommands().values():
        assert isinstance(options(parser)["--help"], argparse._HelpAction)


# --- remus-netbuf.conf(5): every key, its default and its values -------------------------------


def shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def test_every_config_key_has_its_entry_with_its_default() -> None:
    entries = Page(CONF_PAGE).entries("KEYS")
    keys = {tag.split("=")[0]: (tag, body) for tag, body in entries.items()}
    assert list(keys) == list(Config.__slots__)
    defaults = Config()
    for key, (_tag, body) in keys.items():
        assert f"Default: {shown(getattr(defaults, key))}." in body, key


def test_each_key_names_what_it_accepts() -> None:
    keys = {t.split("=")[0]: (t, b) for t, b in Page(CONF_PAGE).entries("KEYS").items()}
    assert f"1 to {config.PLUG_LIMIT_MAX}" in keys["plug_limit"][1]
    assert words(keys["protocols"][0]) == {"protocols", *config.PROTOCOLS}
    tag, body = keys["ifb_autocreate"]
    accepted = words(tag) | set(re.findall(r"\w+", body))
    assert set(config._TRUE) | set(config._FALSE) <= accepted
    assert "absolute path" in keys[config.LOCK_DIR][1]


def test_the_shipped_config_has_the_same_keys() -> None:
    shipped = (Path(config.__file__).parents[1] / "etc/xen/remus-netbuf.conf").read_text()
    assert re.findall(r"^#(\w+)=", shipped, re.M) == list(Config.__slots__)


def test_the_teardown_rule_names_the_one_key_teardown_needs() -> None:
    rule = Page(CONF_PAGE).text("TEARDOWN AND GC")
    assert f"needs {config.LOCK_DIR} alone" in rule
    assert "warning" in rule


# --- remus-netbuf-setup(8): every environment variable the hotplug path reads ------------------


def _constants(tree: ast.Module) -> dict[str, str]:
    """The module's top-level ``NAME = "string"`` constants."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    found[target.id] = node.value.value
    return found


def _is_environ(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id == "environ") or (
        isinstance(node, ast.Attribute) and node.attr == "environ"
    )


def _read_keys(node: ast.AST) -> list[ast.expr]:
    """The key expressions of an environment read at ``node``: ``environ[K]``,
    ``environ.get(K)``, ``K in environ``, ``os.getenv(K)``."""
    if isinstance(node, ast.Subscript) and _is_environ(node.value):
        return [node.slice]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
        if node.func.attr == "getenv" or (
            node.func.attr in ("get", "pop", "setdefault") and _is_environ(node.func.value)
        ):
            return [node.args[0]]
    if isinstance(node, ast.Compare) and _is_environ(node.comparators[-1]):
        if isinstance(node.ops[-1], ast.In | ast.NotIn):
            return [node.left]
    return []


def environment_reads() -> tuple[set[str], set[str]]:
    """(the variables the package reads by name or by constant, the modules that read some
    other way), over every module of the package."""
    names, unresolved = set(), set()
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        for node in ast.walk(tree):
            for key in _read_keys(node):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    names.add(key.value)
                elif isinstance(key, ast.Name) and key.id in constants:
                    names.add(constants[key.id])
                else:
                    unresolved.add(path.stem)
    return names, unresolved


def hotplug_variables() -> set[str]:
    names, unresolved = environment_reads()
    # request.py reads its contract's variables in a loop over request.VARIABLES; a read of an
    # unnamed variable anywhere else could not be checked here: give it a constant.
    assert unresolved == {"request"}
    assert {"XENSTORED_PATH", "REMUS_NETBUF_CONF", netbuf.KILL_AT_ENV} <= names  # walk works
    return names | set(request.VARIABLES)


def test_the_hotplug_page_names_every_environment_variable() -> None:
    documented = set(Page(SETUP_PAGE).entries("ENVIRONMENT"))
    assert hotplug_variables() - documented == set()
    assert documented - hotplug_variables() == set()  # none the code no longer reads


def test_the_cli_page_names_the_variables_it_honours() -> None:
    hotplug_only = {*request.VARIABLES, netbuf.KILL_AT_ENV}  # the CLI takes flags for these
    documented = set(Page(CLI_PAGE).entries("ENVIRONMENT"))
    assert documented == hotplug_variables() - hotplug_only


def test_the_hotplug_page_names_the_xenstore_nodes_and_addrgenmode() -> None:
    page = Page(SETUP_PAGE)
    assert set(page.entries("XENSTORE")) == {"ifb", "hotplug-status", "hotplug-error"}
    assert "ip link set dev ifbN addrgenmode none" in page.text("DESCRIPTION", "IPv6 on the IFB")
    assert set(page.entries("EXIT STATUS")) == {"0", "1"}
