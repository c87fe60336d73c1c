"""Loaded by tests/schemathesis.sh (SCHEMATHESIS_HOOKS) before schemathesis runs.

CPython 3.11 up to 3.11.7 can raise `SystemError: AST constructor recursion depth
mismatch` from `ast.parse` when it is called deep in a stack (CPython gh-106905, fixed in
3.11.8). Hypothesis parses source files with it only to describe a lambda in a
strategy's repr, and lets that error end the whole operation's test run. A description
is cosmetic: on that error, describe the lambda as unknown and go on generating.
"""

import hypothesis.internal.lambda_sources as lambda_sources

_describe = lambda_sources._lambda_description


def _describe_or_unknown(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


lambda_sources._lambda_description = _describe_or_unknown
