"""The `tpdeploy` command line: one module per stage, each command a few lines over its stage's report.

app.py        the command group and its error handling (one line, an exit code per kind of error)
options.py    the option groups, with the defaults of the modules that own them
console.py    progress on stderr, reports on stdout and as JSON
describe.py   info, presets, archs
convert.py    export, quantize, build-engine
measure.py    bench, compare
accuracy.py   eval, sweep
train.py      finetune
serving.py    serve, triton-repo
"""

from tpdeploy.cli import accuracy, convert, describe, measure, serving, train
from tpdeploy.cli.app import main

for command in (
    describe.info,
    describe.presets,
    convert.export,
    convert.quantize,
    measure.bench,
    measure.compare,
    convert.build_engine,
    serving.serve,
    serving.triton_repo,
    describe.archs,
    accuracy.eval_command,
    accuracy.sweep,
    train.finetune,
):
    main.add_command(command)

__all__ = ["main"]
