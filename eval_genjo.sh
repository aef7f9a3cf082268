#!/usr/bin/env bash
# Evaluate Genjo with lm-evaluation-harness through eval_genjo.py (model "genjo_dist"). See EVAL.md.
#
#   ./eval_genjo.sh [base|instruct|all]   the 8B benchmark commands (default: base), one accelerate line each
#   ./eval_genjo.sh --tiny                the offline tasks of eval_tasks/ with the embedded models, on the CPU
#   ./eval_genjo.sh --dry-run ...         print the commands instead of running them
#
# Environment:
#   GENJO_BASE_MODEL / GENJO_INSTRUCT_MODEL   checkpoint folders or hub ids of the 8B models
#   LAUNCH             the launcher of the 8B lines (default: "accelerate launch"; one process per GPU)
#   OUTPUT_PATH        where lm-eval writes results (default: eval_results)
#   GENJO_TINY_PROCS   --tiny only: 1 (default) runs one process; 2 runs two CPU processes with
#                      accelerate (gloo), which needs the explicit multi-process CPU command below.
# The math tasks need: pip install antlr4-python3-runtime==4.11 math_verify sympy
set -euo pipefail
cd "$(dirname "$0")"

export HF_ALLOW_CODE_EVAL=1
export HF_DATASETS_TRUST_REMOTE_CODE=true

BASE=${GENJO_BASE_MODEL:-Genjo-8B-Base}
INSTRUCT=${GENJO_INSTRUCT_MODEL:-Genjo-8B-Instruct}
LAUNCH=${LAUNCH:-accelerate launch}
OUTPUT_PATH=${OUTPUT_PATH:-eval_results}
DRY_RUN=0

run() {
    echo "+ $*"
    if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

# One 8B line: task, shots ("" = the task's default), batch ("" = lm-eval's default), model args, extra flags.
line() {
    local task=$1 shots=$2 batch=$3 args=$4
    shift 4
    local -a flags=(--tasks "$task" --model genjo_dist --model_args "$args" --output_path "$OUTPUT_PATH")
    [ -n "$shots" ] && flags+=(--num_fewshot "$shots")
    [ -n "$batch" ] && flags+=(--batch_size "$batch")
    # shellcheck disable=SC2086  # LAUNCH may hold several words
    run $LAUNCH eval_genjo.py "${flags[@]}" "$@"
}

base() {
    local m="model_path=$BASE"
    # Likelihood tasks: Monte-Carlo ELBO (mc_num samples, batch_size rows per forward), no greedy check.
    line gpqa_main_n_shot 5 8 "$m,cfg=0.5,mc_num=128,is_check_greedy=False"
    line truthfulqa_mc2 0 8 "$m,cfg=2.0,mc_num=128,is_check_greedy=False"
    line arc_challenge 0 8 "$m,cfg=0.5,mc_num=128,is_check_greedy=False"
    line hellaswag 0 8 "$m,cfg=0.5,mc_num=128,is_check_greedy=False"
    line piqa 0 8 "$m,cfg=0.5,mc_num=128,is_check_greedy=False"
    line winogrande 5 8 "$m,cfg=0.0,mc_num=128,is_check_greedy=False"
    # One-token answers: mc_num=1 gives log p exactly.
    line mmlu 5 1 "$m,cfg=0.0,mc_num=1,is_check_greedy=False"
    line cmmlu 5 1 "$m,cfg=0.0,mc_num=1,is_check_greedy=False"
    line ceval-valid 5 1 "$m,cfg=0.0,mc_num=1,is_check_greedy=False"
    # Generation tasks: one block, one token per step.
    local g="$m,cfg=0.0,gen_length=1024,steps=1024,block_length=1024"
    line bbh "" "" "$g"
    line gsm8k "" "" "$g"
    line minerva_math "" "" "$g"
    line humaneval "" "" "$g" --confirm_run_unsafe_code
    line mbpp "" "" "$g" --confirm_run_unsafe_code
}

instruct() {
    # The context becomes one user turn of the chat template (chat_template=True); block = gen_length = steps.
    local m="model_path=$INSTRUCT,chat_template=True,cfg=0.0"
    gen() { echo "$m,gen_length=$1,steps=$1,block_length=$1"; }
    local ceei=confidence_eos_eot_inf=True
    line mmlu_generative "" "" "$(gen 3)"
    line mmlu_pro "" "" "$(gen 256)"
    # lm-eval ships no generative HellaSwag: scored by likelihood of the answer turn (not the published setting).
    line hellaswag 0 8 "$m,mc_num=128,is_check_greedy=False"
    line arc_challenge_chat "" "" "$(gen 512)"
    line gsm8k "" "" "$(gen 512),$ceei"
    line minerva_math "" "" "$(gen 512),$ceei"
    line gpqa_main_generative_n_shot "" "" "$(gen 64),$ceei"
    line humaneval_instruct "" "" "$(gen 512),logits_eos_inf=True" --confirm_run_unsafe_code
    line mbpp_instruct "" "" "$(gen 256),$ceei" --confirm_run_unsafe_code
}

tiny() {
    # Offline: the task data are local files (eval_tasks/data), the models are embedded.
    export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
    local -a launcher=(python)
    if [ "${GENJO_TINY_PROCS:-1}" -gt 1 ]; then
        # "accelerate launch --cpu --num_processes N" silently starts ONE process; this starts N.
        export ACCELERATE_USE_CPU=true
        launcher=(accelerate launch --multi_gpu --num_processes "$GENJO_TINY_PROCS" --num_machines 1
            --mixed_precision no --dynamo_backend no --main_process_port "${PORT:-29517}")
    fi
    local -a common=(--model genjo_dist --device cpu --include_path eval_tasks --output_path "$OUTPUT_PATH")
    # Base model (the default model_path without chat_template): 4-way choice by likelihood.
    run "${launcher[@]}" eval_genjo.py "${common[@]}" --tasks genjo_tiny_choice --batch_size 32 \
        --model_args mc_num=128,is_check_greedy=False
    # Instruct model (the default model_path with chat_template=True): choice and generation.
    run "${launcher[@]}" eval_genjo.py "${common[@]}" --tasks genjo_tiny_choice_chat,genjo_tiny_gen --batch_size 32 \
        --model_args chat_template=True,mc_num=128,is_check_greedy=False,gen_length=32,steps=32,block_length=32
}

mode=base
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        --tiny) mode=tiny ;;
        base | instruct | all) mode=$arg ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use base, instruct, all, --tiny, --dry-run)" >&2; exit 2 ;;
    esac
done

case $mode in
    base) base ;;
    instruct) instruct ;;
    all) base; instruct ;;
    tiny) tiny ;;
esac
