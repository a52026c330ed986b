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

# The judge of a GRPO recipe, always named in the command (never a silent default):
#   am3_judge_overrides BACKEND   sets JUDGE_OVERRIDES to the reward kwargs for that backend.
# openai: AM3_JUDGE_BASE_URL and AM3_JUDGE_MODEL must be set; they are checked here, before anything
# starts, and passed as explicit reward kwargs (so reward workers on other nodes do not depend on their
# environment; AM3_JUDGE_API_KEY stays in the environment of every node and out of the config).
# heuristic: the offline keyword judge, announced on stderr. Guards: pass their kwargs as overrides.
am3_judge_overrides() {
  local backend="$1" prefix=+reward.custom_reward_function.reward_kwargs
  case "$backend" in
    openai)
      : "${AM3_JUDGE_BASE_URL:?the openai judge needs AM3_JUDGE_BASE_URL (e.g. http://judge-host:8000/v1), or set AM3_JUDGE_BACKEND}"
      : "${AM3_JUDGE_MODEL:?the openai judge needs AM3_JUDGE_MODEL (the served judge model name)}"
      JUDGE_OVERRIDES=("$prefix.backend=openai" "$prefix.base_url=$AM3_JUDGE_BASE_URL" "$prefix.model=$AM3_JUDGE_MODEL")
      ;;
    heuristic)
      echo "am3-verl: JUDGE = OFFLINE HEURISTIC (keyword rules), not a judge model" >&2
      JUDGE_OVERRIDES=("$prefix.backend=heuristic")
      ;;
    *)
      echo "am3-verl: AM3_JUDGE_BACKEND must be openai or heuristic (guards: pass reward_kwargs overrides), got '$backend'" >&2
      return 2
      ;;
  esac
}

# The experiment trackers of a GRPO recipe (verl's trainer.logger), chosen with AM3_LOGGER:
#   am3_logger_overrides DEFAULT   sets LOGGER_OVERRIDES to trainer.logger=[...] from AM3_LOGGER, a
# comma-separated list of console, tensorboard, wandb, mlflow and file (verl's trackers), or from
# DEFAULT (the recipe's own choice) when AM3_LOGGER is unset. The choice is announced on stderr.
# tensorboard writes to $TENSORBOARD_DIR (verl's default: ./tensorboard_log/<project>/<experiment>);
# wandb and mlflow read their usual environment (WANDB_API_KEY / WANDB_MODE, MLFLOW_TRACKING_URI).
am3_logger_overrides() {
  local chosen="${AM3_LOGGER:-$1}" name
  local -a names=()
  IFS=',' read -ra names <<< "$chosen"
  [[ ${#names[@]} -gt 0 ]] || { echo "am3-verl: AM3_LOGGER is empty; name at least one of console, tensorboard, wandb, mlflow, file" >&2; return 2; }
  for name in "${names[@]}"; do
    case "$name" in
      console|tensorboard|wandb|mlflow|file) ;;
      *) echo "am3-verl: AM3_LOGGER entries must be console, tensorboard, wandb, mlflow or file, got '$name'" >&2; return 2 ;;
    esac
  done
  if [[ -n "${AM3_LOGGER:-}" ]]; then
    echo "am3-verl: trainer.logger=[$chosen] (from AM3_LOGGER)" >&2
  else
    echo "am3-verl: trainer.logger=[$chosen] (the recipe default; set AM3_LOGGER to change it)" >&2
  fi
  LOGGER_OVERRIDES=("trainer.logger=[$chosen]")
}
