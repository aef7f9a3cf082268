"""The training loop: one stage (pretrain, sft or vrpo) of one objective, data-parallel under accelerate.

Each step sets the learning rate (linear warm-up, cosine decay), takes the global batch of the data source
(genjo/train/data.py) and the step's masking noise, trains on this process's slice of rows in grad_accum
micro-batches with the objective's loss (genjo/train/losses.py), and every eval_every steps appends a record
to RUN_DIR/learning_curve.jsonl (training loss, validation loss with --data, held-out accuracy in tiny-world
SFT). Every save_every steps RUN_DIR/last holds a usable checkpoint plus what --resume needs.

vrpo (genjo/train/preference.py) takes the same steps on preference pairs: its batch is P pairs, its noise the
ELBO estimates' times and masks, its loss needs the frozen reference model (the --init checkpoint), and its
record holds the held-out preference accuracy and margin (the reference's held-out estimates computed once).
"""

import functools
import json
import math
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from .. import tinyworld
from ..evaluation import family_accuracy
from ..storage import (
    commit_folder,
    prepare_staging,
    read_lines,
    recover_folder,
    staging_folder,
    write_text_atomic,
)
from ..tokenizer import build_tokenizer
from .args import TrainArgs, check_args
from .data import row_attention, training_data
from .losses import OBJECTIVES, forward_process, masked_cross_entropy, objective_and_router_loss, step_noise
from .model import (
    enable_gradient_checkpointing,
    load_training_model,
    load_training_tokenizer,
    new_model,
    save_checkpoint,
    write_checkpoint,
)
from .preference import (
    held_out_parts,
    load_reference,
    preference_metrics,
    reference_on_held_out,
    vrpo_step_loss,
    vrpo_step_tensors,
)

STATE_FILE = "training_state.pt"
CURVE_FILE = "learning_curve.jsonl"


def learning_rate(args: TrainArgs, step: int) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(args: TrainArgs, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms and embeddings."""
    embedding = model.get_input_embeddings().weight
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not embedding]
    no_decay = [p for p in model.parameters() if not (p.dim() >= 2 and p is not embedding)]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def micro_slices(tensor, rows: slice, n: int) -> list:
    """This process's rows of a global (b, ...) tensor in n micro-batches, or n Nones for an absent tensor."""
    return [None] * n if tensor is None else list(tensor[rows].chunk(n))


# ----------------------------------------------------------------------------- evaluation


def heldout_share(args: TrainArgs, rank: int = 0, world_size: int = 1) -> list:
    """This process's share of the fixed held-out problems (every world_size-th, from rank on)."""
    problems = tinyworld.sample_problems(args.eval_problems * len(tinyworld.FAMILIES), seed=10_000, split="heldout")
    return problems[rank::world_size]


def evaluate(
    model, tokenizer, args: TrainArgs, rank: int = 0, world_size: int = 1, progress: bool = False
) -> tuple[dict[str, float], int]:
    """Exact-match accuracy per family on fixed held-out problems (this process's share), and its size.

    The answers use the tiny world's own sampler settings (tinyworld.SAMPLER_DEFAULTS), whatever the model
    under training has in its config.
    """
    mine = heldout_share(args, rank, world_size)
    was_training = model.training
    model.eval()
    accuracy = family_accuracy(model, tokenizer, mine, progress=progress, **tinyworld.SAMPLER_DEFAULTS)
    model.train(was_training)
    return accuracy, len(mine)


@torch.no_grad()
def validation_loss(
    model, batches, args: TrainArgs, mask_id: int, accelerator, progress: bool = False, eos_id: Optional[int] = None
) -> float:
    """The negative ELBO in nats per token on the validation set (fixed noise): an upper bound of the NLL.

    pretrain: sum(CE / p) over masked slots / tokens. sft: the same over answer slots (prompt restored,
    never masked) / answer tokens, the EOS padding to the batch's longest answer included.
    batches: global (input_ids (b, L), prompt_lengths (b,) or None, weights (b,)) from FileData.eval_batches.
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64)  # weighted nats, weighted tokens
    for index, (input_ids, prompt_lengths, weights) in enumerate(
        tqdm(batches, desc="validation loss", leave=False, disable=not progress)
    ):
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + index)  # the same noise at every eval
        noisy, masked, p_mask = forward_process(input_ids, mask_id, args.eps, generator)
        if prompt_lengths is None:
            prompt_lengths = torch.zeros(input_ids.shape[0], dtype=torch.long)
        prompt = torch.arange(input_ids.shape[1])[None, :] < prompt_lengths[:, None]
        noisy, masked = torch.where(prompt, input_ids, noisy), masked & ~prompt
        tensors = [t[rows] for t in (input_ids, noisy, masked, p_mask, prompt_lengths, weights)]
        for part in zip(*(t.chunk(args.grad_accum) for t in tensors)):
            ids, noisy_, masked_, p_, prompt_len, w = (t.to(accelerator.device) for t in part)
            attention_bias = row_attention(args, ids, eos_id) if eos_id is not None else None
            per_slot = masked_cross_entropy(model, noisy_, ids, masked_, p_, attention_bias)  # (b, L)
            totals[0] += (per_slot.sum(1).double() * w).sum().item()
            totals[1] += ((ids.shape[1] - prompt_len).double() * w).sum().item()
    model.train(was_training)
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return float(totals[0] / totals[1])


def save_training_state(accelerator, model, optimizer, tokenizer, folder: Path, fsdp: bool, state: dict) -> None:
    """Weights and tokenizer (a usable checkpoint) plus what --resume needs: step, tokens, data position,
    optimizer (one file; under FSDP one shard per process in folder/optimizer).

    Crash-safe: everything is written into ``FOLDER.saving`` beside folder, fsync'ed, and swapped in with
    renames (genjo/storage.py), so a kill at any moment leaves the previous checkpoint or this one whole.
    """
    full_state = accelerator.get_state_dict(model) if fsdp else None
    staging = staging_folder(folder)
    if accelerator.is_main_process:
        prepare_staging(folder)
    accelerator.wait_for_everyone()
    if fsdp:
        from accelerate.utils import save_fsdp_optimizer

        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(staging / "optimizer"))
    else:
        state["optimizer"] = optimizer.state_dict()
    accelerator.wait_for_everyone()  # every process's optimizer shard is written
    if accelerator.is_main_process:
        write_checkpoint(accelerator.unwrap_model(model), tokenizer, staging, state_dict=full_state)
        torch.save({**state, "world_size": accelerator.num_processes}, staging / STATE_FILE)
        commit_folder(staging, folder)
    accelerator.wait_for_everyone()


def load_training_state(path: Path, fsdp: bool) -> dict:
    """The training state saved with a checkpoint (tensors and plain Python values only: loading cannot run
    code); a ValueError naming the file when it cannot be read or lacks what --resume needs."""
    fix = "resume from an intact copy of the run folder, or start again with --no-resume"
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # a truncated or foreign file: EOFError, UnpicklingError, IndexError, RuntimeError...
        raise ValueError(f"{path} cannot be read as a training state ({type(error).__name__}: {error}); "
                         f"{fix}.") from None  # fmt: skip
    # Under FSDP the optimizer state is sharded in FOLDER/optimizer, otherwise it is in the state file: a run
    # resumes only the way it was saved.
    sharded = isinstance(state, dict) and "optimizer" not in state and (path.parent / "optimizer").is_dir()
    if sharded and not fsdp:
        raise ValueError(f"{path.parent} was saved under FSDP by {state.get('world_size', 'several')} processes "
                         "(its optimizer state is sharded in optimizer/); resume it under FSDP with as many "
                         "processes (accelerate launch --config_file ...) or start over with --no-resume.")  # fmt: skip
    if fsdp and isinstance(state, dict) and "optimizer" in state:
        raise ValueError(f"{path.parent} was saved without FSDP (its optimizer state is in {path.name}); resume it "
                         "as it was run (one process or data-parallel), or start again with --no-resume.")  # fmt: skip
    needed = ("step", "tokens", "data") if fsdp else ("step", "tokens", "data", "optimizer")
    missing = [key for key in needed if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is not a complete training state (no {', '.join(missing)}); {fix}.")
    return state


def restore(what: str, path: Path, load, state) -> None:
    """load(state) (a data source's or the optimizer's load_state_dict); a ValueError naming the state file
    when the saved part does not fit this run."""
    try:
        load(state)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: the saved {what} does not fit this run ({type(error).__name__}: {error}); "
                         "resume with the run's own settings, or start again with --no-resume.") from None  # fmt: skip


def gathered_accuracy(model, tokenizer, args, accelerator) -> dict[str, float]:
    """Accuracy over all processes' shares of the held-out problems."""
    acc, n = evaluate(model, tokenizer, args, accelerator.process_index, accelerator.num_processes,
                      progress=accelerator.is_main_process)  # fmt: skip
    keys = list(tinyworld.FAMILIES) + ["all"]
    # A share need not hold every family equally (the problems cycle through the families, so with 2 processes
    # each gets two of the four): weigh each family's accuracy by this share's own count of it.
    share = Counter(problem.family for problem in heldout_share(args, accelerator.process_index,
                                                                accelerator.num_processes))  # fmt: skip
    share["all"] = n
    counts = torch.tensor([acc.get(k, 0.0) * share[k] for k in keys], dtype=torch.float64)
    totals = torch.tensor([share[k] for k in keys], dtype=torch.float64)
    counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
    totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    return {k: round(float(c / t), 4) if t else 0.0 for k, c, t in zip(keys, counts, totals)}


def trim_learning_curve(path: Path, start_step: int) -> None:
    """Keep the learning-curve records of steps up to start_step: a run started over (0) begins a new curve, and a
    resumed one drops the records written after its checkpoint, which it writes again. A torn last line (a
    write cut short) is dropped too."""
    if not path.exists():
        return
    kept = []
    for line in read_lines(path, complete_only=True):  # a torn last line has no newline: dropped here
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= start_step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def make_accelerator(mixed_precision: str, cpu: bool):
    """The run's Accelerator; an FSDP config on CPU processes (``use_cpu: true``) gets FSDP2 sharding, as on GPUs.

    accelerate (1.x, state.py) turns an FSDP config into FSDP only for GPU-like distributed types: CPU processes
    launched with one come out as MULTI_CPU, i.e. plain data parallelism, with the config's sharding silently
    dropped. FSDP2 itself (``fully_shard`` over a gloo process group) runs on CPU, so Genjo sets the state's
    distributed type to FSDP with the config's plugin (read from the environment the launcher sets), as
    accelerate does on GPUs. This is what lets configs/fsdp_cpu_2proc.yaml check the FSDP path on a CPU machine.
    Runs without an FSDP config (one process, DDP) are left as accelerate makes them.
    """
    import os

    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    fsdp_config = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_config and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # the config's fsdp_* settings, from the launcher's FSDP_* variables
        if plugin.fsdp_version != 2:
            raise ValueError(f"FSDP on CPU processes runs as FSDP2 only; the accelerate config has fsdp_version "
                             f"{plugin.fsdp_version}: set fsdp_version: 2 (configs/fsdp_cpu_2proc.yaml).")  # fmt: skip
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        # What AcceleratorState.__init__ does for GPUs: the plugin and the type, in both shared states (each later
        # AcceleratorState() copies PartialState's type over its own).
        accelerator.state.fsdp_plugin = plugin
        accelerator.state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return accelerator


def train(args: TrainArgs, data=None) -> str:
    """Run one stage; returns the folder of the final model.

    data: optional source of global batches instead of the tiny world or --data, with the interface of
    TinyWorldData (the reversal experiment, genjo/reversal.py, trains on its own facts this way).
    """
    from accelerate.utils import DistributedType

    use_cuda = torch.cuda.is_available()
    precision = {"auto": "bf16" if use_cuda else "no"}.get(args.mixed_precision, args.mixed_precision)
    accelerator = make_accelerator(precision, cpu=not use_cuda)
    rank, world = accelerator.process_index, accelerator.num_processes
    check_args(args, world)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    run_dir = Path(args.run_dir)
    last_dir = run_dir / "last"

    if accelerator.is_main_process:
        recover_folder(last_dir)  # a save killed between its two renames left the previous checkpoint aside
    accelerator.wait_for_everyone()
    state = None
    if args.resume and (last_dir / STATE_FILE).exists():
        state = load_training_state(last_dir / STATE_FILE, fsdp)
        if state.get("world_size", world) != world and fsdp:
            raise ValueError(f"{last_dir} holds FSDP optimizer shards of {state['world_size']} processes; "
                             f"resume with the same number of processes (not {world}).")  # fmt: skip
        tokenizer = load_training_tokenizer(last_dir)
        model = load_training_model(last_dir)
    elif args.init:
        tokenizer = load_training_tokenizer(args.tokenizer or args.init)
        model = load_training_model(args.init)
    else:
        torch.manual_seed(args.seed)
        if args.tokenizer:
            tokenizer = load_training_tokenizer(args.tokenizer)
        else:
            tokenizer = build_tokenizer(vocab_size=args.vocab_size)
        model = new_model(args, tokenizer)
    causal = bool(getattr(model.config, "causal", False))
    if causal != OBJECTIVES[args.objective].causal:
        kinds = ", ".join(f"'{name}' {'causal' if o.causal else 'bidirectional'}" for name, o in OBJECTIVES.items())
        raise ValueError(f"--objective {args.objective} does not match the model (config.causal={causal}): "
                         f"{kinds} models; pass the objective of the --init checkpoint.")  # fmt: skip
    if len(tokenizer) > model.config.embedding_size:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the model only {model.config.embedding_size} "
                         "embeddings; pass the tokenizer the model was trained with (--tokenizer).")  # fmt: skip
    start_step = state["step"] if state else 0
    if accelerator.is_main_process:
        trim_learning_curve(run_dir / CURVE_FILE, start_step)
    mask_id = model.config.mask_token_id
    eos_id = tokenizer.eos_token_id  # ends each packed document (document-level attention masks)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    tiny_world = data is None and not args.data  # the tiny world's own accuracy and sampler settings apply
    if data is None:
        data = training_data(args, tokenizer)
    if state is not None:
        restore("data position", last_dir / STATE_FILE, data.load_state_dict, state["data"])
    eval_batches = data.eval_batches()
    vrpo = args.stage == "vrpo"
    if vrpo:  # the frozen reference: the --init checkpoint, also when resuming
        reference = load_reference(args.init, accelerator, fsdp)
        held_out = held_out_parts(args, eval_batches, rank, world, accelerator.device)
        stored_reference = reference_on_held_out(reference, held_out, mask_id)
    optimizer = make_optimizer(args, model)
    if state is not None and not fsdp:
        restore("optimizer state", last_dir / STATE_FILE, optimizer.load_state_dict, state["optimizer"])
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if state is not None and fsdp:
        from accelerate.utils import load_fsdp_optimizer

        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(last_dir / "optimizer"))
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(run_dir / "args.json", json.dumps(asdict(args), indent=2))
        n_params = sum(p.numel() for p in unwrapped.parameters())
        print(f"{args.stage}: {n_params / 1e6:.2f}M parameters, {world} process(es), steps {start_step}..{args.steps}")
        if args.data:
            unit = {"pretrain": "rows", "sft": "prompt/answer pairs", "vrpo": "preference pairs"}[args.stage]
            n_eval = sum(int(batch[-1].sum()) for batch in eval_batches)
            print(f"data: {args.data}; validation: {n_eval} {unit} from {args.eval_data or 'a held-out split'}")

    rows = slice(rank * args.batch_size // world, (rank + 1) * args.batch_size // world)
    loss_fn = OBJECTIVES[args.objective].loss
    if vrpo:
        loss_fn = functools.partial(vrpo_step_loss, reference=reference, beta=args.beta, mask_id=mask_id,
                                    sft_weight=args.sft_weight)  # fmt: skip
    # A mixture-of-experts model also minimises its routers' load-balancing loss, logged beside the objective's.
    router_coef = float(unwrapped.config.router_aux_loss_coef) if getattr(unwrapped.config, "num_experts", 0) else None
    last_step = min(args.steps, args.stop_at or args.steps)
    progress = tqdm(range(start_step, last_step), initial=start_step, total=last_step,
                    disable=not accelerator.is_main_process, desc=args.stage)  # fmt: skip
    tokens_seen = state["tokens"] if state else 0
    t_start, tokens_start = time.perf_counter(), tokens_seen
    t_record, tokens_record = time.perf_counter(), 0  # throughput since the last learning-curve record
    recent: list[tuple[float, int]] = []  # (time, tokens) of the last steps, for the bar's tokens/s
    window_losses: list[float] = []  # mean loss between two records of the learning curve
    window_router: list[float] = []  # and the routers' load-balancing loss (mixture-of-experts models)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        if vrpo:  # (chosen, rejected, lengths, answer lengths, the ELBO noise); pairs are never packed
            tensors = (*vrpo_step_tensors(args, data.batch(step), step), None)
        else:
            # A data source may give its rows' attention_bias as a third item (packed SFT rows with document masks).
            input_ids, prompt_lengths, *attention = data.batch(step)
            attention_bias = attention[0] if attention else row_attention(args, input_ids, eos_id)
            noise = step_noise(args.seed, args.stage, args.eps, input_ids, mask_id, step)
            tensors = (input_ids, prompt_lengths, *noise, attention_bias)
        step_tokens = tensors[0].numel() + (tensors[1].numel() if vrpo else 0)
        micro_batches = list(zip(*(micro_slices(t, rows, args.grad_accum) for t in tensors)))
        step_loss = torch.zeros((), device=accelerator.device)
        step_router = torch.zeros((), device=accelerator.device)
        for i, micro in enumerate(micro_batches):
            # Gradients are averaged across processes once per step, after the last micro-batch.
            with accelerator.no_sync(model) if i < len(micro_batches) - 1 else nullcontext():
                *batch, attention_bias = (None if t is None else t.to(accelerator.device) for t in micro)
                total, loss, router = objective_and_router_loss(loss_fn, model, batch, router_coef,
                                                                attention_bias=attention_bias)  # fmt: skip
                accelerator.backward(total / args.grad_accum)
            step_loss += loss.detach() / args.grad_accum
            if router is not None:
                step_router += router.detach() / args.grad_accum
        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += step_tokens
        tokens_record += step_tokens
        mean_loss = accelerator.reduce(step_loss, reduction="mean").item()
        window_losses.append(mean_loss)
        recent = [*recent[-9:], (time.perf_counter(), step_tokens)]
        rate = sum(n for _, n in recent[1:]) / (recent[-1][0] - recent[0][0]) if len(recent) > 1 else 0.0
        # The bar shows this step's loss; the learning-curve record's "loss" is the mean since the previous record.
        shown = {"step_loss": f"{mean_loss:.3f}"}
        if router_coef is not None:
            window_router.append(accelerator.reduce(step_router, reduction="mean").item())
            shown["router"] = f"{window_router[-1]:.3f}"
        progress.set_postfix(**shown, tok_s=f"{rate:.0f}", lr=f"{learning_rate(args, step):.1e}")

        done = step + 1
        if done % args.eval_every == 0 or done == last_step:
            record = {"stage": args.stage, "step": done, "tokens": tokens_seen,
                      "loss": sum(window_losses) / len(window_losses), "loss_steps": len(window_losses),
                      "tokens_per_s": round(tokens_record / (time.perf_counter() - t_record), 1)}  # fmt: skip
            if window_router:  # unweighted; the step minimised loss + router_aux_loss_coef x router_loss
                record["router_loss"] = sum(window_router) / len(window_router)
            window_losses, window_router = [], []
            if vrpo and eval_batches:
                progress.set_description(f"{args.stage} (held-out pairs)")
                record.update(preference_metrics(model, held_out, stored_reference, args.beta, mask_id, accelerator))
            elif eval_batches:
                progress.set_description(f"{args.stage} (validation)")
                record["val_loss"] = validation_loss(model, eval_batches, args, mask_id, accelerator,
                                                     accelerator.is_main_process, eos_id)  # fmt: skip
            if args.stage == "sft" and tiny_world:
                progress.set_description(f"{args.stage} (held-out accuracy)")
                record["accuracy"] = gathered_accuracy(unwrapped, tokenizer, args, accelerator)
            if use_cuda:
                peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
                record["peak_memory_gib"] = [round(x, 2) for x in accelerator.gather(peak).tolist()]
            progress.set_description(args.stage)
            if accelerator.is_main_process:
                progress.write(json.dumps(record))
                with open(run_dir / CURVE_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            t_record, tokens_record = time.perf_counter(), 0
        if done % args.save_every == 0 or done == last_step:
            save_training_state(accelerator, model, optimizer, tokenizer, last_dir, fsdp,
                                 {"step": done, "tokens": tokens_seen, "data": data.state_dict()})  # fmt: skip

    if accelerator.is_main_process:
        elapsed = time.perf_counter() - t_start
        print(f"{tokens_seen - tokens_start} tokens in {elapsed:.0f} s: "
              f"{(tokens_seen - tokens_start) / max(elapsed, 1e-9):.0f} tokens/s over {world} process(es)")  # fmt: skip
    if use_cuda:
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=accelerator.device)
        peaks = ", ".join(f"{x:.2f}" for x in accelerator.gather(peak).tolist())
        if accelerator.is_main_process:
            print(f"peak memory per process (GiB): {peaks}")
    final = args.export or str(run_dir / "final")
    sampler = None
    if args.stage == "sft" and tiny_world:  # a tiny-world instruct model: answers with the tiny world's settings
        sampler = dict(tinyworld.SAMPLER_DEFAULTS)
    full_state = accelerator.get_state_dict(model) if fsdp else None
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(unwrapped, tokenizer, final, sampler, full_state)
        if getattr(data, "reader", None) is not None and getattr(data.reader, "skipped", 0):
            print(f"skipped {data.reader.skipped} prompt/answer pairs longer than --sft-max-len {args.sft_max_len}")
    accelerator.wait_for_everyone()
    return final
