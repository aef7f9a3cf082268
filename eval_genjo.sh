#!/usr/bin/env bash
# Evaluate Genjo with lm-evaluation-harness through eval_genjo.py (model "genjo_dist"). See EVAL.md.
#
#   ./eval_genjo.sh [base|instruct|all]   the 8B benchmark commands (default: base), one accelerate line each
#   ./eval_genjo.sh --tiny                the offline tasks of eval_tasks/ with the embedded models, on the CPU
#   ./eval_genjo.sh --dry-run ...         print the commands instead of running them
#
# Every line runs whatever happened to the ones before (a failing or gated task does not stop the
# rest); a summary of what passed and failed ends the run, and the exit status is 1 if any line failed.
# Only the HumanEval and MBPP lines may execute generated code (HF_ALLOW_CODE_EVAL=1 and
# --confirm_run_unsafe_code on those lines alone). A sampler setting a line leaves unset takes the
# checkpoint's sampler_defaults, else the fallback of genjo/settings.py (128), so every generation line
# states its gen_length, steps and block_length (the paper's 1024 for the base model).
#
# Environment:
#   GENJO_BASE_MODEL / GENJO_INSTRUCT_MODEL   checkpoint folders or hub ids of the 8B models
#   LAUNCH             the launcher of the 8B lines (default: "accelerate launch"; one process per GPU)
#   OUTPUT_PATH        results root (default: eval_results): each line writes into OUTPUT_PATH/<base|instruct|tiny>/<task>,
#                      and the summary names each line's results file
#   GENJO_TINY_PROCS   --tiny only: 1 (default) runs one process; 2 runs two CPU processes with
#                      accelerate (gloo), which needs the explicit multi-process CPU command below.
# The math tasks need: pip install antlr4-python3-runtime==4.11 math_verify sympy
set -uo pipefail # no -e: a failing line is recorded and the next one runs
cd "$(dirname "$0")"

BASE=${GENJO_BASE_MODEL:-Genjo-8B-Base}
INSTRUCT=${GENJO_INSTRUCT_MODEL:-Genjo-8B-Instruct}
LAUNCH=${LAUNCH:-accelerate launch}
OUTPUT_PATH=${OUTPUT_PATH:-eval_results}
DRY_RUN=0
PASSED=()
FAILED=()

RESULT_FILES=()

# Run one command (or print it with --dry-run) and record its outcome under a name. The command writes its
# results into its own folder, OUTPUT_PATH/<base|instruct|tiny>/<slug of the name>, passed to it as --output_path; the
# summary names the result file each run wrote there.
run() {
    local name=$1
    shift
    local out
    out="$OUTPUT_PATH/${group:-$mode}/$(echo "$name" | tr -c 'A-Za-z0-9_.\n-' '_' | sed 's/__*/_/g; s/_$//')"
    echo "+ $* --output_path $out"
    [ "$DRY_RUN" = 1 ] && return 0
    "$@" --output_path "$out"
    local status=$?
    if [ "$status" = 0 ]; then
        PASSED+=("$name")
        local file
        file=$(find "$out" -name 'results_*.json' -newer "$STARTED" 2>/dev/null | sort | tail -n 1)
        RESULT_FILES+=("${file:-(no results file under $out)}")
    else
        FAILED+=("$name (exit $status)")
    fi
}

# One 8B line: task, shots ("" = the task's default), batch ("" = lm-eval's default), model args, extra flags.
# LINE_ENV (set by code_line) prefixes the command with environment settings.
line() {
    local task=$1 shots=$2 batch=$3 args=$4
    shift 4
    local -a flags=(--tasks "$task" --model genjo_dist --model_args "$args")
    [ -n "$shots" ] && flags+=(--num_fewshot "$shots")
    [ -n "$batch" ] && flags+=(--batch_size "$batch")
    # shellcheck disable=SC2086  # LINE_ENV and LAUNCH may hold several words
    run "$task" ${LINE_ENV:-} $LAUNCH eval_genjo.py "${flags[@]}" "$@"
}

# A line whose task executes the generated code (HumanEval, MBPP): the only ones allowed to.
code_line() {
    LINE_ENV="env HF_ALLOW_CODE_EVAL=1" line "$@" --confirm_run_unsafe_code
}

base() {
    local group=base  # the results folder of its lines (read by run)
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
    code_line humaneval "" "" "$g"
    code_line mbpp "" "" "$g"
}

instruct() {
    local group=instruct  # the results folder of its lines (read by run)
    # lm-eval's own chat path: the messages go through the chat template, few-shot examples as turns,
    # a task's gen_prefix opens the assistant's answer. block_length = gen_length = steps.
    local m="model_path=$INSTRUCT,cfg=0.0"
    local -a chat=(--apply_chat_template --fewshot_as_multiturn)
    gen() { echo "$m,gen_length=$1,steps=$1,block_length=$1"; }
    local ceei=confidence_eos_eot_inf=True
    line mmlu_generative "" "" "$(gen 3)" "${chat[@]}"
    line mmlu_pro "" "" "$(gen 256)" "${chat[@]}"
    # lm-eval ships no generative HellaSwag: scored by likelihood of the answer turn (not the published setting).
    line hellaswag 0 8 "$m,mc_num=128,is_check_greedy=False" "${chat[@]}"
    line arc_challenge_chat "" "" "$(gen 512)" "${chat[@]}"
    line gsm8k "" "" "$(gen 512),$ceei" "${chat[@]}"
    line minerva_math "" "" "$(gen 512),$ceei" "${chat[@]}"
    line gpqa_main_generative_n_shot "" "" "$(gen 64),$ceei" "${chat[@]}"
    code_line humaneval_instruct "" "" "$(gen 512),logits_eos_inf=True" "${chat[@]}"
    code_line mbpp_instruct "" "" "$(gen 256),$ceei" "${chat[@]}"
}

tiny() {
    # Offline: the task data are local files (eval_tasks/data), the models are embedded. Nothing here
    # executes generated code.
    export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
    local -a launcher=(python)
    if [ "${GENJO_TINY_PROCS:-1}" -gt 1 ]; then
        # "accelerate launch --cpu --num_processes N" silently starts ONE process; this starts N.
        export ACCELERATE_USE_CPU=true
        launcher=(accelerate launch --multi_gpu --num_processes "$GENJO_TINY_PROCS" --num_machines 1
            --mixed_precision no --dynamo_backend no --main_process_port "${PORT:-29517}")
    fi
    local -a common=(--model genjo_dist --device cpu --include_path eval_tasks)
    # Base model (the default model_path): 4-way choice by likelihood.
    run "genjo_tiny_choice (base)" "${launcher[@]}" eval_genjo.py "${common[@]}" --tasks genjo_tiny_choice \
        --batch_size 32 --model_args mc_num=128,is_check_greedy=False
    # Instruct model through lm-eval's chat path: choice, generation, a gen_prefix, multi-turn few-shot.
    run "genjo_tiny_*_chat (instruct)" "${launcher[@]}" eval_genjo.py "${common[@]}" \
        --tasks genjo_tiny_choice_chat,genjo_tiny_gen,genjo_tiny_prefix,genjo_tiny_fewshot --batch_size 32 \
        --apply_chat_template --fewshot_as_multiturn --model_args \
        model_path=genjo/checkpoints/genjo-tiny-instruct,mc_num=128,is_check_greedy=False,gen_length=32,steps=32,block_length=32
}

mode=base
for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=1 ;;
        --tiny) mode=tiny ;;
        base | instruct | all) mode=$arg ;;
        -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "unknown argument: $arg (use base, instruct, all, --tiny, --dry-run)" >&2; exit 2 ;;
    esac
done

STARTED=$(mktemp)  # result files newer than this one are this run's
trap 'rm -f "$STARTED"' EXIT
case $mode in
    base) base ;;
    instruct) instruct ;;
    all) base; instruct ;;
    tiny) tiny ;;
esac

[ "$DRY_RUN" = 1 ] && exit 0
echo
echo "Summary: ${#PASSED[@]} passed, ${#FAILED[@]} failed (one results folder per line under $OUTPUT_PATH)"
for i in "${!PASSED[@]}"; do echo "  passed  ${PASSED[$i]}: ${RESULT_FILES[$i]}"; done
for name in "${FAILED[@]}"; do echo "  FAILED  $name"; done
[ "${#FAILED[@]}" = 0 ]
