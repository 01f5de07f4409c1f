"""Shell completion scripts for `vmledger`, written from its argument parser: bash, and zsh through bashcompinit."""

from __future__ import annotations

import argparse

from vmledger.eventstore.catalogue import CATALOGUE

__all__ = ["SHELLS", "script"]

SHELLS = ("bash", "zsh")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Return a parser's option strings, those that take a value, and the choices of those that have some."""
    flags, valued, choices = [], [], {}
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        long = [o for o in action.option_strings if o.startswith("--")] or action.option_strings
        flags += long
        if action.nargs != 0:
            valued += long
            if action.choices:
                for o in long:
                    choices[o] = [str(c) for c in action.choices]
    return flags, valued, choices


def _words(parser: argparse.ArgumentParser, *, properties: bool) -> str:
    flags, _, _ = _options(parser)
    names = list(_subparsers(parser))
    props = [("media:" if p == "media" else p) for p in CATALOGUE] if properties else []
    return " ".join([*names, *flags, *props])


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _subparsers(parser)
    valued, choices = [], {}
    for p in (parser, *commands.values(), *_subparsers(commands["sim"]).values()):
        _, v, c = _options(p)
        valued += v
        for o, cs in c.items():
            choices[o] = list(dict.fromkeys([*choices.get(o, []), *cs]))
    cases = [f'        "") words="{_words(parser, properties=False)}";;']
    for name, sub in commands.items():
        if name == "sim":
            actions = _subparsers(sub)
            inner = [f'            "") words="{" ".join(actions)}";;'] + [
                f'            {a}) words="{_words(p, properties=a in ("config", "fail"))}";;' for a, p in actions.items()]
            cases.append('        sim) case "$sub" in\n' + "\n".join(inner) + "\n        esac;;")
        else:
            cases.append(f'        {name}) words="{_words(sub, properties=name in ("set", "get", "history"))}";;')
    choice_cases = "\n".join(f'        {o}) COMPREPLY=($(compgen -W "{" ".join(c)}" -- "$cur")); return;;'
                             for o, c in sorted(choices.items()))
    free = sorted(set(valued) - set(choices))
    # An option's free value (a path, a name, a size): the shell's default, file names.
    choice_cases += f"\n        {'|'.join(free)}) COMPREPLY=(); return;;"
    return f"""# bash completion for vmledger: source <(vmledger completion bash)
_vmledger() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" cmd="" sub="" words="" i
    case "$prev" in
{choice_cases}
    esac
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            {"|".join(sorted(set(valued)))}) ((i++));;
            -*) ;;
            *) if [[ -z $cmd ]]; then cmd="${{COMP_WORDS[i]}}"; elif [[ $cmd == sim && -z $sub ]]; then sub="${{COMP_WORDS[i]}}"; fi;;
        esac
    done
    case "$cmd" in
{chr(10).join(cases)}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _vmledger vmledger
"""


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """Return the completion script of `parser`'s commands for `shell` (`bash` or `zsh`)."""
    bash = _bash(parser)
    if shell == "bash":
        return bash
    return ("#compdef vmledger\n# zsh completion for vmledger: source <(vmledger completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash)
