# Shared launcher for the recipes (source it, then call am3_run).
#
#   am3_run COMMAND... -- RECIPE_OVERRIDES... -- CALLER_OVERRIDES...
#
# A caller's key=value replaces the recipe's value for the same key (hydra itself rejects a key given
# twice), so `bash recipes/sft/X.sh trainer.total_epochs=1` just works. With AM3_PRINT_OVERRIDES=1 the
# merged overrides are printed one per line instead of run; the recipe tests compose them that way.

am3_run() {
  local -a cmd=() recipe=() extra=() merged=()
  while [[ $# -gt 0 && "$1" != "--" ]]; do cmd+=("$1"); shift; done
  shift
  while [[ $# -gt 0 && "$1" != "--" ]]; do recipe+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  extra=("$@")

  local -A replaced=()
  local arg key
  for arg in "${extra[@]}"; do
    key="${arg%%=*}"; key="${key#+}"; key="${key#~}"
    replaced["$key"]=1
  done
  for arg in "${recipe[@]}"; do
    key="${arg%%=*}"; key="${key#+}"; key="${key#~}"
    [[ -n "${replaced[$key]:-}" ]] || merged+=("$arg")
  done
  merged+=("${extra[@]}")

  if [[ "${AM3_PRINT_OVERRIDES:-0}" == 1 ]]; then
    printf '%s\n' "${merged[@]}"
    return 0
  fi
  exec "${cmd[@]}" "${merged[@]}"
}
