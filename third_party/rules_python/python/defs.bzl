"""Stand-in for @rules_python//python:defs.bzl: Bazel 4.2.3's native Python rules.

Used only by the offline Bazel 4.2.3 build (WORKSPACE); with current Bazel,
MODULE.bazel brings the real rules_python. See third_party/README.md.
"""

def py_library(**kwargs):
    native.py_library(**kwargs)

def py_binary(**kwargs):
    native.py_binary(**kwargs)

def py_test(**kwargs):
    native.py_test(**kwargs)

def py_runtime(**kwargs):
    native.py_runtime(**kwargs)
