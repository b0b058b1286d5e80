"""No credential, account id or region is written in the repository (seed 000's audit, automated).

Scans every file git knows about (tracked, plus new files not ignored) that
is text:

* AWS access key ids (``AKIA…``/``ASIA…``) and private key blocks, anywhere;
* secret-looking assignments (``secret_access_key = "…"``, ``password: …``)
  whose value is not an obvious placeholder, anywhere;
* 12-digit AWS account ids in ARNs, SQS URLs and ECR hosts, anywhere (no
  placeholder either: write ``ACCOUNT`` or ``${AWS::AccountId}``);
* region names (``us-east-1``, …) in ``src/`` and ``deploy/`` outside docs:
  Markdown, Python docstrings and comments, and CloudFormation parameter
  ``Default:`` lines are docs or overridable defaults.  Tests may name the
  region their moto/SeaweedFS fixture uses.

A failure names file:line.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
ACCOUNT_ID = re.compile(
    r"arn:aws[\w-]*:[\w-]+:[\w-]*:(\d{12}):"  # ARN
    r"|sqs\.[\w.-]+/(\d{12})/"  # SQS queue URL
    r"|\b(\d{12})\.dkr\.ecr\."  # ECR registry
    r"|(?i:account[_ -]?id)\W{1,4}(\d{12})\b"  # account_id = <12 digits>
)
SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b[\w-]*(?:secret[_-]?access[_-]?key|secret_key|client_secret|password|passwd)\b"
    r"[\"']?\s*[:=]\s*(?P<quote>[\"']?)(?P<value>[^\s\"',;)}]{8,})"
)
# an unquoted lowercase name or attribute access is code passing a value along, not a value
CODE_REFERENCE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[A-Za-z_]\w*)*(?:[(\[].*)?")
PLACEHOLDER = re.compile(
    r"(?i)^(?:\$\{?|<|\{|your|example|changeme|dummy|testing|test|fake|x{3,}|\*{3,}|none|null|"
    r"os\.environ|env\b|getenv|settings\.|self\.|secrets\.|args\.|opts\.|params\.)"
)
REGION = re.compile(
    r"\b(?:us|eu|ap|sa|ca|me|af|il|mx|cn)(?:-gov|-iso|-isob)?-"
    r"(?:north|south|east|west|central|northeast|southeast|northwest|southwest)-\d\b"
)

TEXT_SUFFIXES = {
    ".py", ".pyi", ".md", ".rst", ".txt", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini",
    ".sh", ".bash", ".env", ".html", ".js", ".css", ".sql", ".tf", ".j2", ".conf", ".service",
}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile", "Containerfile", ".gitignore", "run"}
SKIP_PREFIXES = ("test-output/",)

# Region names in src/ or deploy/ that are a protocol fact, not a deployment choice.
# Exact (path, stripped line) pairs, so any other occurrence still fails.
REGION_ALLOWED = {
    # S3 refuses a LocationConstraint for its original region: the API's rule, not our default
    ("src/conveyor/storage/s3.py", 'if region and region != "us-east-1":'),
}


def _files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout: {exc}")
    names = [n for n in out.decode().split("\0") if n]
    return sorted(
        n
        for n in names
        if not n.startswith(SKIP_PREFIXES)
        and (Path(n).suffix in TEXT_SUFFIXES or Path(n).name in TEXT_NAMES)
        and (ROOT / n).is_file()
    )


def _read(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _python_doc_spans(text: str) -> tuple[set[int], dict[int, int]]:
    """Lines inside docstrings, and the column where each line's comment starts."""
    doc_lines: set[int] = set()
    comments: dict[int, int] = {}
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return doc_lines, comments
    for node in ast.walk(tree):
        if isinstance(
            node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        ) and ast.get_docstring(node, clean=False):
            doc = node.body[0]
            doc_lines.update(range(doc.lineno, (doc.end_lineno or doc.lineno) + 1))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.start[1]
    except (tokenize.TokenError, SyntaxError):
        pass
    return doc_lines, comments


def _region_scoped(name: str) -> bool:
    return name.startswith(("src/", "deploy/")) and not name.endswith((".md", ".rst", ".txt"))


def scan(name: str, text: str) -> list[str]:
    problems: list[str] = []
    lines = text.splitlines()
    doc_lines: set[int] = set()
    comments: dict[int, int] = {}
    if name.endswith(".py") and _region_scoped(name):
        doc_lines, comments = _python_doc_spans(text)
    for no, line in enumerate(lines, 1):
        where = f"{name}:{no}"
        if ACCESS_KEY.search(line):
            problems.append(f"{where}: AWS access key id")
        if PRIVATE_KEY.search(line):
            problems.append(f"{where}: private key")
        m = ACCOUNT_ID.search(line)
        if m:
            problems.append(f"{where}: AWS account id {next(g for g in m.groups() if g)}")
        for s in SECRET_ASSIGNMENT.finditer(line):
            value = s.group("value")
            if PLACEHOLDER.match(value):
                continue
            if not s.group("quote") and CODE_REFERENCE.fullmatch(value):
                continue
            problems.append(f"{where}: secret-looking assignment {s.group(0)[:40]!r}")
        if _region_scoped(name):
            for r in REGION.finditer(line):
                if no in doc_lines or (no in comments and r.start() >= comments[no]):
                    continue
                if name.endswith((".yaml", ".yml", ".json")) and re.match(
                    r"\s*\"?Default\"?\s*:", line
                ):
                    continue
                if (name, line.strip()) in REGION_ALLOWED:
                    continue
                problems.append(f"{where}: hard-coded region {r.group(0)!r}")
    return problems


def test_repository_has_no_secrets_account_ids_or_regions() -> None:
    files = _files()
    assert files, "git listed no files"
    problems: list[str] = []
    for name in files:
        text = _read(name)
        if text is not None:
            problems += scan(name, text)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("name", "line", "what"),
    [
        ("src/x.py", "key = 'AKIA" + "ABCDEFGHIJKLMNOP'", "access key"),
        ("docs/a.md", "arn:aws:sqs:region:" + "123456789012" + ":q", "account id"),
        ("docs/a.md", "https://sqs.region.amazonaws.com/" + "210987654321" + "/q", "account id"),
        ("src/x.py", "aws_secret_access_key = " + "'wJalrXUtnFEMI/K7MDENG/bPxRfiCY'", "secret"),
        ("src/x.py", "REGION = 'eu-" + "west-1'", "region"),
        ("config.env", "AWS_SECRET_ACCESS_KEY=" + "wJalrXUtnFEMIK7MDENGbPxRfiCY", "secret"),
        ("deploy/aws/t.yaml", "  Region: ap-" + "southeast-1", "region"),
    ],
)
def test_scanner_catches(name: str, line: str, what: str) -> None:
    [problem] = scan(name, line + "\n")
    assert problem.startswith(f"{name}:1:")
    assert what.split()[0] in problem.lower() or what in problem


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("src/x.py", '"""Example: s3://?region=eu-' + 'west-1"""\n'),
        ("src/x.py", "x = 1  # e.g. us-" + "east-1\n"),
        ("deploy/aws/t.yaml", "    Default: us-" + "east-1\n"),
        ("deploy/aws/README.md", "deploy to us-" + "east-1\n"),
        ("tests/fixture.py", "REGION = 'us-" + "east-1'\n"),
        ("src/x.py", "password = os.environ['PW']\n"),
        ("src/x.py", "AWS_SECRET_ACCESS_KEY=your-secret-key\n"),
        ("tests/x.py", "secret_access_key = secret_access_key"),
        ("tests/x.py", '"AWS_SECRET_ACCESS_KEY": s3.secret_access_key,'),
        ("deploy/aws/t.yaml", "Resource: !Sub arn:aws:sqs:${AWS::Region}:${AWS::AccountId}:q\n"),
    ],
)
def test_scanner_allows(name: str, text: str) -> None:
    assert scan(name, text) == []
