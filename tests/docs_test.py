"""The documentation's links, commands and flagfiles point at things that exist.

Fast (no training): the markdown is parsed with regular expressions, and the
flags of each `python -m age_tf.<module>` named in the docs are read from
absl's FLAGS in one process per module (a module's flags cannot share a
process with another's: several define the same names).

* Every relative link in README.md, docs/*.md, benchmarks/README.md and
  export/README.md resolves to a file (or folder) in the repository, and a
  `#anchor` into a markdown file names one of its headings (GitHub's slugs).
* Every `--flag` of a `python -m age_tf.<module>` command in the code blocks
  (and inline code) of README.md and docs/*.md is a flag that module defines
  (`--noflag` for booleans, absl's `--flagfile`, `--helpfull`, ...).
* Every flagfile `flags/*.cfg` named in those files exists.
"""

import collections
import concurrent.futures
import glob
import json
import os
import re

import pytest

from conftest import run_code

# The source tree, also under Bazel (runfiles are symlinks into it).
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

LINKED_DOCS = ("README.md", "docs/*.md", "benchmarks/README.md", "export/README.md")
COMMAND_DOCS = ("README.md", "docs/*.md")

FENCE = re.compile(r"^ {0,3}(```|~~~)")
# [text](target) and ![alt](target); the target ends at whitespace or ")".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# A command: `python -m age_tf.X`, `python3 -m age_tf.X` or `bazel run //:X --`.
COMMAND = re.compile(r"\bpython3?\s+-m\s+age_tf\.([A-Za-z_][\w.]*)|\bbazel\s+run\s+//:(\w+)\s+--")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z_][\w-]*)")
FLAGFILE = re.compile(r"(?<![\w./-])flags/([\w.{},-]+?\.cfg)\b")


def doc_files(patterns):
  found = []
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.join(ROOT, pattern)))
    assert matches, f"no file matches {pattern}"
    found += matches
  return found


def read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def split_markdown(text):
  """(prose, code blocks): prose with fenced blocks blanked, and each block's text."""
  prose, blocks, block = [], [], None
  for line in text.split("\n"):
    if FENCE.match(line):
      if block is None:
        block = []
      else:
        blocks.append("\n".join(block))
        block = None
      prose.append("")
    elif block is not None:
      block.append(line)
      prose.append("")
    else:
      prose.append(line)
  if block is not None:
    blocks.append("\n".join(block))
  return "\n".join(prose), blocks


def links(text):
  """Link targets of the prose (inline code removed), in order."""
  prose, _ = split_markdown(text)
  prose = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose)
  return [m.group(1) for m in INLINE_LINK.finditer(prose)] + [
      m.group(1) for m in REFERENCE_LINK.finditer(prose)]


def github_slug(heading):
  """GitHub's anchor for a heading's text: markdown stripped, lowercased, punctuation dropped."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
  text = re.sub(r"<[^>]+>", "", text)  # inline HTML
  text = text.lower()
  text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, _, -, spaces
  return text.replace(" ", "-")


def anchors(path):
  """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeats."""
  prose, _ = split_markdown(read(path))
  seen, result = collections.Counter(), set()
  for line in prose.split("\n"):
    m = HEADING.match(line)
    if not m:
      continue
    slug = github_slug(m.group(2))
    result.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
    seen[slug] += 1
  result.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", read(path)))
  return result


def link_problems(path, root=ROOT):
  """What is wrong with each relative link of one markdown file."""
  problems = []
  for target in links(read(path)):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition("#")
    resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                if file_part else path)
    where = f"{os.path.relpath(path, root)}: link {target!r}"
    inside = os.path.relpath(resolved, root)
    if inside == os.pardir or inside.startswith(os.pardir + os.sep):
      problems.append(f"{where} leaves the repository")
    elif not os.path.exists(resolved):
      problems.append(f"{where}: no such file {inside}")
    elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
      problems.append(f"{where}: {inside} has no heading #{anchor}")
  return problems


def commands(text):
  """(module, [flag names]) of every age_tf command in the code blocks and inline code."""
  prose, blocks = split_markdown(text)
  snippets = blocks + [m.group(2) for m in INLINE_CODE.finditer(prose)]
  found = []
  for snippet in snippets:
    snippet = re.sub(r"\\\n", " ", snippet)  # continuation lines
    snippet = re.sub(r"\$\([^()]*\)", " ", snippet)  # $(...) substitutions
    for line in snippet.split("\n"):
      line = re.sub(r"(^|\s)#.*", "", line)  # shell comments
      for part in re.split(r"&&|\|\||;|\|", line):
        m = COMMAND.search(part)
        if m:
          module = m.group(1) or m.group(2)
          found.append((module, FLAG.findall(part[m.end():])))
  return found


def flagfiles(text):
  """flags/NAME.cfg paths named anywhere in the text, {a,b}_x.cfg expanded."""
  names = []
  for name in FLAGFILE.findall(text):
    m = re.search(r"\{([^{}]*)\}", name)
    names += ([name[:m.start()] + choice + name[m.end():] for choice in m.group(1).split(",")]
              if m else [name])
  return [f"flags/{n}" for n in names]


_LIST_FLAGS = r"""
import json, sys
from absl import app, flags
app.run = lambda *args, **kwargs: None  # a module's run() defines its own flags, then app.run
app.define_help_flags()
import importlib
module = importlib.import_module(sys.argv[1])
if hasattr(module, "run"):
  module.run()
names = set()
for name, flag in flags.FLAGS._flags().items():
  names.add(name)
  if flag.boolean:
    names.add("no" + name)
names.update(("flagfile", "undefok"))
print(json.dumps(sorted(names)))
"""


def module_flags(module):
  """The flag names `python -m age_tf.<module>` accepts, from a process of its own."""
  result = run_code(_LIST_FLAGS, f"age_tf.{module}", timeout=300)
  if result.returncode:
    return None, result.stderr[-2000:]
  return set(json.loads(result.stdout.strip().splitlines()[-1])), None


def flag_problems(paths, flags_of):
  problems = []
  for path in paths:
    for module, names in commands(read(path)):
      known = flags_of(module)
      unknown = sorted(set(names) - known)
      if unknown:
        problems.append(f"{os.path.relpath(path, ROOT)}: python -m age_tf.{module} has no "
                        f"flag {', '.join('--' + n for n in unknown)}")
  return problems


@pytest.fixture(scope="module")
def flags_by_module():
  modules = sorted({module for path in doc_files(COMMAND_DOCS)
                    for module, _ in commands(read(path))})
  assert modules, "the docs name no python -m age_tf.<module> command"
  with concurrent.futures.ThreadPoolExecutor(len(modules)) as pool:
    results = dict(zip(modules, pool.map(module_flags, modules)))
  failed = {m: err for m, (names, err) in results.items() if names is None}
  assert not failed, "\n".join(f"python -m age_tf.{m} does not import:\n{err}"
                               for m, err in failed.items())
  return {m: names for m, (names, _) in results.items()}


def test_relative_links_resolve_to_files_and_headings():
  problems = [p for path in doc_files(LINKED_DOCS) for p in link_problems(path)]
  assert not problems, "\n".join(problems)


def test_command_flags_are_defined_by_their_module(flags_by_module):
  problems = flag_problems(doc_files(COMMAND_DOCS), flags_by_module.__getitem__)
  assert not problems, "\n".join(problems)


def test_named_flagfiles_exist():
  missing = [f"{os.path.relpath(path, ROOT)}: {name}" for path in doc_files(LINKED_DOCS)
             for name in flagfiles(read(path))
             if not os.path.isfile(os.path.join(ROOT, name))]
  assert not missing, "missing flagfiles:\n" + "\n".join(missing)


def test_the_checks_catch_what_they_are_for(tmp_path):
  """The parsers on a made-up page: a broken link, a bad anchor, an unknown flag, a flagfile."""
  (tmp_path / "docs").mkdir()
  (tmp_path / "a.md").write_text("# A title (`--x`)\n\n## Same\n\n## Same\n")
  page = tmp_path / "docs" / "page.md"
  page.write_text(
      "[ok](../a.md#a-title---x) [ok2](../a.md#same-1) [bad](../missing.md) "
      "[bad anchor](../a.md#nowhere) [web](https://example.com/x.md) `[not](a/link.md)`\n\n"
      "```sh\n"
      "python -m age_tf.train --method=age \\\n"
      "    --datset=digits --noexport   # --not_a_flag in a comment\n"
      "x=$([ 1 ] && echo 2) python -m age_tf.train --flagfile=flags/nope.cfg && ls --color\n"
      "```\n"
      "Inline: `python -m age_tf.evaluate --model_dir=D --bogus`.\n")
  assert "leaves the repository" in link_problems(str(page), root=str(tmp_path / "docs"))[0]
  problems = link_problems(str(page), root=str(tmp_path))
  assert len(problems) == 2 and "missing.md" in problems[0] and "#nowhere" in problems[1], problems
  assert commands(page.read_text()) == [
      ("train", ["method", "datset", "noexport"]), ("train", ["flagfile"]),
      ("evaluate", ["model_dir", "bogus"])]
  known = {"train": {"method", "dataset", "noexport", "flagfile"},
           "evaluate": {"model_dir"}}
  problems = flag_problems([str(page)], known.__getitem__)
  assert len(problems) == 2 and "--datset" in problems[0] and "--bogus" in problems[1], problems
  assert flagfiles("`flags/{ali,gali4}_svhn.cfg` and --flagfile=flags/nope.cfg") == [
      "flags/ali_svhn.cfg", "flags/gali4_svhn.cfg", "flags/nope.cfg"]
  assert github_slug("Datasets (`--dataset`)") == "datasets---dataset"
  assert github_slug("Paper text versus the [authors'](x.md) code") == (
      "paper-text-versus-the-authors-code")
