"""The policy files the studio may touch, and what it does with them: the CLI's own tools, on edited text.

Every answer comes from the code behind `gateway policy ...`, so the browser and the CLI cannot disagree:

- validation is `policytools.validate` itself, run on the edited text (written to a private temporary
  directory, its findings mapped back to the real file names), rendered by `render_validation`;
- the edited files are read by the loader's `read_policy` and compiled by `Matcher`, as `load_policies`
  does (one mount per file), for the matrix (`build_matrix`), the access diff (`diff_policies`) and the
  simulations (`check` through the `Authorizer`, `explain` for the upstream URL and the nearest rules);
- policy tests are the test files' cases (`load_suite`), decided by `check` on the edited policies.

Only the files the studio was started with can be read or written: they are known by their index
("0", "1", ...), never by a path a request names. A save writes a version that validates, atomically
(temporary file, fsync, rename) with the previous version kept beside it as `NAME.prev`, and only when
the file on disk is still the version the editor started from (else `Conflict`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.settings import Settings
from gateway.errors import LoadError
from gateway.guard.authorize import Authorizer
from gateway.policy.loader import read_policy
from gateway.policy.matcher import Matcher
from gateway.policy.model import Policy, Rule, display_path, rule_label
from gateway.policytools import tools
from gateway.policytools.common import rule_where
from gateway.policytools.testing import load_suite
from gateway.yamlsource import load_text

__all__ = ["MAX_TEXT_CHARS", "Conflict", "PolicyFile", "StudioError", "Workspace", "write_atomically"]

MAX_TEXT_CHARS = 512 * 1024  # one policy file as edited; a paste beyond this is refused (413)
PREVIOUS_SUFFIX = ".prev"

Json = dict[str, object]


class StudioError(Exception):
    """A request the studio refuses: answered as `{"message": ...}` (plus `extra`) with `status`."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class Conflict(StudioError):
    """The file changed on disk since the editor opened it: nothing was written."""

    def __init__(self, file: PolicyFile, text: str, version: str) -> None:
        message = f"{file.name} changed on disk since it was opened; nothing was written"
        super().__init__(409, message, file=file.id, disk_text=text, disk_version=version)


@dataclass(frozen=True, slots=True)
class PolicyFile:
    """One policy file the studio edits: its id in the API, its path as given, its name as shown."""

    id: str
    path: str
    name: str


def version_of(data: bytes) -> str:
    """The version a save must start from: the SHA-256 of the file's bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Workspace:
    """The policy files given on the command line (or named by the config), and the tools run on them."""

    paths: Sequence[str]
    config: str | None = None
    settings: Settings | None = None
    tests: Sequence[str] | None = None  # test files or directories (default: `tests/` beside each policy)
    env: Mapping[str, str] | None = None
    files: tuple[PolicyFile, ...] = field(init=False)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.files = tuple(PolicyFile(str(i), path, display_path(path)) for i, path in enumerate(self.paths))
        for file in self.files:
            self.read(file)  # unreadable at start: a LoadError naming it

    # --- the files ---------------------------------------------------------------------------------------

    def file(self, file_id: object) -> PolicyFile:
        """The file with this id; anything else (a path, `../x`, a number out of range) is refused (404)."""
        found = next((f for f in self.files if f.id == file_id), None)
        if found is None:
            raise StudioError(404, "no such file: only the files the studio was started with can be read or written")
        return found

    def read(self, file: PolicyFile) -> tuple[str, str]:
        """(text, version) of the file on disk."""
        try:
            data = Path(file.path).read_bytes()
            return data.decode("utf-8"), version_of(data)
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc.__class__.__name__
            raise LoadError(f"cannot read file: {reason}", file=file.path) from None

    def documents(self) -> list[Json]:
        """Every file as the editor opens it: id, name, text and version."""
        found: list[Json] = []
        for file in self.files:
            text, version = self.read(file)
            found.append({"id": file.id, "name": file.name, "text": text, "version": version})
        return found

    def texts(self, edits: Mapping[str, str]) -> dict[str, str]:
        """The text of every file: the edited one where given, else the one on disk."""
        unknown = [key for key in edits if key not in {f.id for f in self.files}]
        if unknown:
            self.file(unknown[0])
        return {f.id: edits[f.id] if f.id in edits else self.read(f)[0] for f in self.files}

    # --- validate, compile, matrix ------------------------------------------------------------------------

    def validate(self, texts: Mapping[str, str]) -> Json:
        """`gateway policy validate` on these texts: findings by file id and line, and the CLI's text."""
        with tempfile.TemporaryDirectory(prefix="smsguard-studio-") as directory:
            temporary: dict[str, PolicyFile] = {}
            for file in self.files:
                path = Path(directory, file.id, Path(file.path).name)
                path.parent.mkdir()
                path.write_text(texts[file.id], encoding="utf-8")
                temporary[str(path)] = file
            report = tools.validate(list(temporary), config=self.config, env=self.env)
        diagnostics = tuple(_mapped(d, temporary) for d in report.diagnostics)
        files = tuple(f.path for f in self.files) + ((self.config,) if self.config else ())
        shown = tools.ValidationReport(files, diagnostics, report.rules, report.scopes)
        by_path = {f.path: f.id for f in self.files}
        return {
            "diagnostics": [
                {
                    "file": by_path.get(d.file),
                    "name": display_path(d.file) if d.file else "",
                    "line": d.line,
                    "column": d.column,
                    "severity": d.severity,
                    "key": d.key,
                    "message": d.message,
                    "hint": d.hint,
                    "text": d.render(),
                }
                for d in diagnostics
            ],
            "errors": shown.errors,
            "warnings": shown.warnings,
            "text": tools.render_validation(shown),
        }

    def compile(self, texts: Mapping[str, str]) -> tuple[tuple[Policy, ...], Matcher]:
        """Read and compile the texts as the gateway loads files (first error raised, one mount per file)."""
        policies: list[Policy] = []
        seen: dict[str, Policy] = {}
        for file in self.files:
            read = read_policy(load_text(texts[file.id], file.path))
            other = seen.get(read.policy.mount)
            if other is not None:
                raise LoadError(
                    f"mount {read.policy.mount or '/'!r} is already used by {display_path(other.file)}",
                    file=file.path,
                    line=read.mount.line,
                    column=read.mount.column,
                    key="mount",
                    hint="give each policy file its own mount, or merge the files",
                )
            seen[read.policy.mount] = read.policy
            policies.append(read.policy)
        return tuple(policies), Matcher(policies)

    def rule_json(self, rule: Rule) -> Json:
        by_path = {f.path: f.id for f in self.files}
        return {"label": rule_label(rule), "file": by_path.get(rule.file), "line": rule.line}

    def matrix(self, policies: Sequence[Policy]) -> Json:
        """`gateway policy matrix --format json`, each route also with its file id, line and upstream."""
        matrix = tools.build_matrix(policies)
        data = json.loads(tools.matrix_json(matrix))
        for route, row in zip(data["routes"], matrix.rows, strict=True):
            route.update(self.rule_json(row.rule), rule=rule_where(row.rule), upstream=row.rule.upstream)
        data["vocabulary"] = {scope: text for policy in policies for scope, text in policy.scopes.items()}
        data["upstreams"] = sorted({p.upstream for p in policies if p.upstream is not None})
        return dict(data)

    # --- simulate ------------------------------------------------------------------------------------------

    async def simulate(
        self, texts: Mapping[str, str], method: str, target: str, *, scopes: Sequence[str] | None, token: str | None
    ) -> Json:
        """`gateway policy check` + `explain` on the edited policies: anonymous when neither scopes nor token."""
        policies, matcher = self.compile(texts)
        if token is not None and self.settings is None:
            raise StudioError(400, "a token is verified with the config's issuers: start the studio with --config")
        if self.settings is None:
            authorizer = tools.offline_authorizer(matcher)
        else:
            authorizer = Authorizer.from_settings(self.settings, policies=policies)
        principal = tools.cli_principal(scopes) if scopes is not None and token is None else None
        try:
            result = await tools.check(
                authorizer, method, target, principal=principal, token=token, settings=self.settings
            )
        finally:
            await authorizer.aclose()
        explanation = tools.explain(method, target, matcher, self.settings)
        return self._simulation_json(result, explanation)

    def _simulation_json(self, result: tools.CheckResult, e: tools.Explanation) -> Json:
        rule = result.rule or (e.match.rule if e.match is not None else None)
        who = result.principal
        return {
            "allowed": result.allowed,
            "outcome": result.outcome(),
            "status": result.status,
            "code": result.code,
            "message": result.message,
            "rule": None if rule is None else self.rule_json(rule),
            "requires": None if rule is None else tools.Requirement.of(rule).sentence(),
            "canonical": e.path,
            "upstream": e.upstream,
            "upstream_note": e.upstream_note,
            "served_by": None if e.served_by is None else e.served_by.what,
            "nearest": [self.rule_json(r) for r in e.nearest],
            "other_methods": [self.rule_json(r) for r in e.other_methods],
            "principal": None if who is None else {"subject": who.subject, "scopes": sorted(who.scopes)},
            "text": tools.render_check(result) + tools.render_explanation(e),
        }

    # --- review: access diff and policy tests ---------------------------------------------------------------

    async def review(self, texts: Mapping[str, str]) -> Json:
        """What saving would change: the access diff against the files on disk, and the policy tests' results."""
        policies, _ = self.compile(texts)
        disk = self.texts({})
        note = ""
        try:
            before, _ = self.compile(disk)
        except LoadError as exc:
            before, note = (), f"the version on disk does not load ({exc.line_text}): every route counts as new"
        changes = tools.diff_policies(before, policies)
        suites = [suite for path in self.test_files() if (suite := await self._suite(path, policies)) is not None]
        return {
            "changed": [f.id for f in self.files if texts[f.id] != disk[f.id]],
            "changes": [{**change.as_json(), "text": change.render()} for change in changes],
            "diff_text": tools.render_diff(changes),
            "note": note,
            "tests": [
                {
                    "file": display_path(s.file),
                    "passed": s.passed,
                    "failed": s.failed,
                    "failures": ([s.error.render()] if s.error else [])
                    + [r.render() for r in s.results if not r.passed],
                }
                for s in suites
            ],
            "tests_text": tools.render_suites(suites) if suites else "no policy tests found\n",
            "tests_failed": sum(s.failed for s in suites),
        }

    def test_files(self) -> list[str]:
        if self.tests is not None:
            return tools.find_test_files(self.tests)
        directories = dict.fromkeys(str(Path(f.path).parent / "tests") for f in self.files)
        return tools.find_test_files([d for d in directories if Path(d).is_dir()])

    async def _suite(self, path: str, edited: Sequence[Policy]) -> tools.SuiteResult | None:
        """One test file's cases against the edited policies; None when it tests none of the studio's files."""
        mine = {os.path.realpath(policy.file): policy for policy in edited}
        try:
            suite = load_suite(path, self.env)
            if not any(os.path.realpath(p.file) in mine for p in suite.policies):
                return None
            matcher = Matcher([mine.get(os.path.realpath(p.file), p) for p in suite.policies])
        except LoadError as exc:
            return tools.SuiteResult(path, error=tools.Diagnostic.from_error(exc))
        authorizer = tools.offline_authorizer(matcher)
        results = []
        for case in suite.cases:
            result = await tools.check(authorizer, case.method, case.target, principal=case.principal)
            results.append(tools.CaseResult(case, result))
        return tools.SuiteResult(path, tuple(results))

    # --- save -------------------------------------------------------------------------------------------------

    def save(self, file: PolicyFile, text: str, base: str) -> Json:
        """Write `text` if it validates together with the other files on disk and the disk is still `base`."""
        with self._lock:
            report = self.validate({**self.texts({}), file.id: text})
            if report["errors"]:
                raise StudioError(422, f"{file.name} does not validate; nothing was written", validation=report)
            current, version = self.read(file)
            if version != base:
                raise Conflict(file, current, version)
            data = text.encode("utf-8")
            write_atomically(Path(file.path), data, previous=current.encode("utf-8"))
        previous = display_path(file.path + PREVIOUS_SUFFIX)
        return {"file": file.id, "version": version_of(data), "previous": previous, "validation": report}


def _mapped(d: tools.Diagnostic, temporary: Mapping[str, PolicyFile]) -> tools.Diagnostic:
    """A finding on a temporary copy, told about the real file (its name also replaced inside messages)."""
    message, hint = d.message, d.hint
    for path, file in temporary.items():
        for shown in {path, display_path(path)}:
            message, hint = message.replace(shown, file.name), hint.replace(shown, file.name)
    real = temporary.get(d.file)
    return tools.Diagnostic(real.path if real else d.file, d.line, d.column, d.severity, d.key, message, hint)


def write_atomically(path: Path, data: bytes, *, previous: bytes | None = None) -> None:
    """Replace `path` with `data` by rename (readers see the old or the new file, never a mix).

    `previous` (the replaced version) is first kept beside it as `NAME.prev`, also by rename. A symbolic
    link is followed: the file it points to is replaced, the link stays.
    """
    target = Path(os.path.realpath(path))
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o644
    if previous is not None:
        _replace(target.with_name(target.name + PREVIOUS_SUFFIX), previous, mode)
    _replace(target, data, mode)


def _replace(target: Path, data: bytes, mode: int) -> None:
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
