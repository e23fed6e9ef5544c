"""The installed commands (pyproject.toml's [project.scripts]): age-tf-train runs age_tf.train as `python -m age_tf.train` does, and so on."""

import runpy


def _run_as_main(module):
  # What `python -m` does: the module runs under the name __main__ with
  # sys.argv[0] set to its file, so its own main block (run(): absl.app.run on
  # its main, after defining any flags only the command has, such as export's
  # --version) runs unchanged, and --help/--helpshort show its docstring and
  # its flags as they do under `python -m`. absl.app.run always ends with
  # SystemExit; nothing is returned (the console script would exit with it).
  runpy.run_module(module, run_name="__main__", alter_sys=True)


def train():
  _run_as_main("age_tf.train")


def evaluate():
  _run_as_main("age_tf.evaluate")


def export():
  _run_as_main("age_tf.export")


def classifier():
  _run_as_main("age_tf.classifier")
