"""User values (overrides, ``--env`` values, paths) as they must be written for NeMo-Run 0.11.1
to put them into the sbatch script unchanged.

NeMo-Run pastes a task's arguments and every ``export KEY=value`` into the script as given
(``Script.to_command`` and ``SlurmBatchRequest.materialize`` join words with spaces, quoting
nothing), and before that runs each argument and env value through ``string.Template``'s
``safe_substitute`` (its ``ExecutorMacros``), which turns ``$$`` into ``$`` and
``${head_node_ip_var}``-style names into its own. So a value is shell-quoted, then each ``$``
doubled: the template gives the quoted word back, and bash gives the value back. The script's
own expansions (``${het_group_host_0:-$head_node}``, ``$SLURM_JOB_ID``) are written without
this and stay live."""

import shlex


def script_word(value: str) -> str:
    """``value`` as one word of the sbatch script, for a NeMo-Run argument or env value."""
    return shlex.quote(value).replace("$", "$$")


def script_words(values: list[str]) -> list[str]:
    return [script_word(value) for value in values]
