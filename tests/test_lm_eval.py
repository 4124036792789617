"""lm-evaluation-harness offline: the adapter equals an independent forward pass
(log-likelihood, rolling windows, greedy decoding); local task YAMLs through
lm-eval, the command, the evaluation inside training, and bad input."""

import os

# Before `datasets` is imported (it reads them once): no test reaches the hub.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TQDM_DISABLE"] = "1"

import json  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402
from lm_eval import evaluator  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from scipy.special import log_softmax  # noqa: E402

from pipeline.documents import stdlib_files  # noqa: E402
from pipeline.stdlib_bytes import ByteTokenizer  # noqa: E402
from pipeline.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer  # noqa: E402
from tests.cpu_devices import xla_flags  # noqa: E402
from tests.test_trainer import ROOT, data, make_config  # noqa: E402
from trainer import lm_eval_lib, lm_eval_tasks  # noqa: E402
from trainer.inference import data_parallel_mesh  # noqa: E402
from trainer.lm_eval_batches import length_buckets, score_row  # noqa: E402
from trainer.lm_eval_model import GriffinLM  # noqa: E402
from trainer.train_loop import run_steps  # noqa: E402

L = 64  # the training length, so lm-eval's max_length
VOCAB = 512
SENTENCES = ["The sky on a clear day is blue.", "Two plus two equals four.",
             "Water freezes at zero degrees Celsius.", "The capital of France is Paris."]
MC_ROWS = [{"question": q, "choices": c, "label": y} for q, c, y in (
    ("The sky on a clear day is", ["blue", "green", "plaid"], 0),
    ("Two plus two equals", ["four", "five hundred"], 0),
    ("Water freezes at zero degrees", ["Fahrenheit", "Celsius"], 1),
    ("The capital of France is", ["Paris", "Rome", "blue"], 0))]
PPL_ROWS = [{"text": " ".join(SENTENCES * 8)}, {"text": "A short one."}]
GEN_QUESTIONS = ["What is the capital of France?", "What colour is the sky?"]
GEN_KWARGS = {"until": ["\n", "Q:"], "max_gen_toks": 16, "do_sample": False, "temperature": 0.0}
MEAN = {"aggregation": "mean", "higher_is_better": True}
TASKS = {  # as lm-eval's YAML; JSON is YAML
    "tiny_mc": {"output_type": "multiple_choice", "doc_to_text": "Question: {{question}}\nAnswer:",
                "doc_to_choice": "{{choices}}", "doc_to_target": "label",
                "metric_list": [{"metric": "acc", **MEAN}]},
    "tiny_ppl": {"output_type": "loglikelihood_rolling", "doc_to_text": "",
                 "doc_to_target": "{{text}}", "metric_list": [{"metric": "bits_per_byte"}]},
    "tiny_gen": {"output_type": "generate_until", "doc_to_text": "Q: {{question}}\nA:",
                 "doc_to_target": "{{answer}}", "generation_kwargs": GEN_KWARGS,
                 "metric_list": [{"metric": "exact_match", **MEAN}],  # "exact_match,strip":
                 "filter_list": [{"name": "strip", "filter": [
                     {"function": "remove_whitespace"}, {"function": "take_first"}]}]},
}


def write_task(root: pathlib.Path, name: str, rows: list[dict], spec: dict | None = None):
  """<root>/tasks/<name>.yaml (`spec`, default TASKS[name]) over
  <root>/data/<name>.jsonl by its absolute path."""
  for folder in ("data", "tasks"):
    (root / folder).mkdir(exist_ok=True)
  rows_path = root / "data" / f"{name}.jsonl"
  rows_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
  (root / "tasks" / f"{name}.yaml").write_text(json.dumps({
      "task": name, "dataset_path": "json", "test_split": "test", **(spec or TASKS[name]),
      "dataset_kwargs": {"data_files": {"test": str(rows_path)}, "cache_dir": str(root / "hf")},
      "metadata": {"version": 1.0}}, indent=1))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """A SentencePiece tokenizer (BOS 2, EOS 1) and the tiny_mc and tiny_ppl tasks."""
  root = tmp_path_factory.mktemp("lm_eval")
  texts = SENTENCES * 500 + [pathlib.Path(p).read_text() for p in stdlib_files(20)[0]]
  save_tokenizer(train_tokenizer(texts, VOCAB, max_chars=200_000), str(root / "sp.model"))
  write_task(root, "tiny_mc", MC_ROWS)
  write_task(root, "tiny_ppl", PPL_ROWS)
  return root


def train_config(root, tasks="tiny_mc,tiny_ppl"):
  """One step of a two-block (R, A) Griffin with that tokenizer, then lm-eval."""
  return make_config(**{"data.dataset": "stdlib", "data.tokenizer": str(root / "sp.model"),
                        "model.vocab_size": VOCAB, "model.depth": 2, "model.block_pattern": "RA",
                        "model.remat": "none", "data.seq_len": L, "run.steps": 1,
                        "optimizer.warmup_steps": 0, "checkpoint.save_every_steps": 1,
                        "run.lm_eval_every_steps": 1, "run.lm_eval_tasks": tasks,
                        "run.lm_eval_include_path": str(root / "tasks"),
                        "run.lm_eval_builtin_tasks": False})


@pytest.fixture(scope="module")
def tokenizer(root):
  return load_tokenizer(str(root / "sp.model"))


@pytest.fixture(scope="module")
def trained(root):
  run_steps(train_config(root), str(root / "run"), data(train_config(root)))
  return str(root / "run")


@pytest.fixture(scope="module")
def lm(trained):
  return lm_eval_lib.load_lm(trained, batch_size=8)  # max_length: the training L


@pytest.fixture(scope="module")
def log_probs(lm):
  """ids -> (len, V) float64 log-softmax; the model called directly, padded after (causal)."""
  model = nnx.merge(lm.graphdef, lm.params)
  forward = jax.jit(lambda tokens, segment_pos: model(tokens, segment_pos)[0])

  def run(ids):
    tokens = np.zeros((1, L), np.int32)
    tokens[0, :len(ids)] = ids
    logits = forward(tokens, np.arange(L, dtype=np.int32)[None])[0, :len(ids)]
    return log_softmax(np.asarray(logits, np.float64), axis=-1)
  return run


def reference_loglikelihood(tokenizer, log_probs, context, continuation):
  """lm-eval's HF rules written out: the continuation is the tail of BOS + context +
  continuation (taking the context's trailing spaces); cut from the left to L + 1."""
  encode = lambda s: tokenizer.encode_batch([s])[0]  # noqa: E731
  bos = [tokenizer.bos_id]
  if not context:
    context_ids, continuation_ids = bos, encode(continuation)
  else:
    spaces = len(context) - len(context.rstrip())
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = bos + encode(context)
    continuation_ids = (bos + encode(context + continuation))[len(context_ids):]
  ids = (context_ids + continuation_ids)[-(L + 1):]
  first = len(ids) - 1 - len(continuation_ids)  # the first scored position
  lp, targets = log_probs(ids[:-1])[first:], ids[1 + first:]
  return lp[np.arange(len(targets)), targets].sum(), bool(np.all(lp.argmax(-1) == targets))


def requests(kind, *args):
  return [Instance(kind, {}, a if isinstance(a, tuple) else (a,), 0) for a in args]


def test_loglikelihood_equals_an_independent_forward_pass(lm, tokenizer, log_probs):
  context, whole = tokenizer.encode_batch(["The sky is bl", "The sky is blue and green"])
  assert whole[:len(context)] != context  # "bl" + "ue" meet inside a token
  pairs = [("Question: The sky on a clear day is\nAnswer:", " blue"),
           ("The sky is bl", "ue and green"), ("The sky is bl", "ue"),  # HF leaves "ue" 0 tokens
           ("Two plus two equals ", "four"), ("", "Water freezes at zero"),
           (" ".join(SENTENCES * 4), " Paris is the capital.")]  # > L tokens: cut
  assert len(tokenizer.encode_batch([pairs[-1][0]])[0]) > L
  got = lm.loglikelihood(requests("loglikelihood", *pairs))
  want = [reference_loglikelihood(tokenizer, log_probs, *pair) for pair in pairs]
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-5, atol=1e-5)
  assert [g[1] for g in got] == [w[1] for w in want]


def test_rolling_loglikelihood_is_the_sum_over_windows(lm, tokenizer, log_probs):
  """Windows of L: BOS + text first, then the next L tokens from the one before
  them; the last is filled up with earlier tokens. Each token is scored once."""
  texts = [row["text"] for row in PPL_ROWS]
  got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", *texts))
  for text, total in zip(texts, got):
    ids = tokenizer.encode_batch([text])[0]
    want = 0.0
    for start in range(0, len(ids), L):
      end = min(start + L, len(ids))
      inputs = [tokenizer.bos_id] + ids[:end - 1] if start == 0 else ids[end - L - 1:end - 1]
      lp = log_probs(inputs)[-(end - start):]
      want += lp[np.arange(end - start), ids[start:end]].sum()
    np.testing.assert_allclose(total, want, rtol=1e-5, atol=1e-5)
  assert len(tokenizer.encode_batch([texts[0]])[0]) > 2 * L  # three windows or more


def test_greedy_generation_equals_argmax_decoding_and_stops(lm, tokenizer, log_probs):
  contexts = ["Q: What is the capital of France?\nA:", "The sky"]
  full = lm.generate_until(requests("generate_until", *[
      (c, {"until": [], "max_gen_toks": 12}) for c in contexts]))
  for context, text in zip(contexts, full):
    ids, new = ([tokenizer.bos_id] + tokenizer.encode_batch([context])[0])[-(L - 12):], []
    for _ in range(12):  # the argmax of a full forward pass, token by token
      new.append(int(log_probs(ids + new)[-1].argmax()))
    assert text == tokenizer.decode(new[:new.index(1)] if 1 in new else new)  # EOS is 1
  stop = full[0][3:5]
  cut = lm.generate_until(requests("generate_until", (contexts[0], {"until": [stop],
                                                                   "max_gen_toks": 12})))
  assert len(stop) == 2 and cut == [full[0][:full[0].index(stop)]] and len(cut[0]) <= 3


@pytest.fixture(scope="module")
def gen_task(root, lm):
  """tiny_gen: the first answer is what the model generates, the second is not."""
  outputs = lm.generate_until(requests("generate_until", *[
      (f"Q: {q}\nA:", GEN_KWARGS) for q in GEN_QUESTIONS]))
  answers = [outputs[0].strip(), outputs[1].strip() + " not this"]
  write_task(root, "tiny_gen", [{"question": q, "answer": a}
                                for q, a in zip(GEN_QUESTIONS, answers)])
  return root / "tasks"


@pytest.fixture(scope="module")
def results(lm, gen_task):
  names = ["tiny_mc", "tiny_ppl", "tiny_gen"]
  return evaluator.simple_evaluate(
      model=lm, tasks=names, task_manager=lm_eval_tasks.task_manager(names, str(gen_task), False),
      bootstrap_iters=0, log_samples=False)


def test_local_tasks_through_lm_eval(lm, tokenizer, log_probs, results):
  correct = []
  for row in MC_ROWS:
    q = f"Question: {row['question']}\nAnswer:"
    scores = [reference_loglikelihood(tokenizer, log_probs, q, f" {c}")[0] for c in row["choices"]]
    correct.append(int(np.argmax(scores)) == row["label"])
  scores = results["results"]
  assert scores["tiny_mc"]["acc,none"] == pytest.approx(np.mean(correct))
  texts = [row["text"] for row in PPL_ROWS]
  total = sum(lm.loglikelihood_rolling(requests("loglikelihood_rolling", *texts)))
  assert scores["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(
      -total / len("".join(texts).encode()) / math.log(2))
  assert scores["tiny_gen"]["exact_match,strip"] == 0.5
  assert results["config"]["prefix_token"] == "BOS (id 2)"
  assert lm.buckets == (L,) and lm.compiles() == 2  # one scoring and one generation program


def test_scores_are_logged_during_training(trained, results):
  records = [json.loads(line) for line in open(os.path.join(trained, "metrics.jsonl"))]
  logged = {k: v for r in records for k, v in r.items() if k.startswith("lm_eval")}
  assert logged["lm_eval/tiny_mc/acc"] == results["results"]["tiny_mc"]["acc,none"]
  assert logged["lm_eval/tiny_ppl/bits_per_byte"] == pytest.approx(
      results["results"]["tiny_ppl"]["bits_per_byte,none"], rel=1e-6)
  assert logged["lm_eval_seconds"] > 0


def cli(*args):
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_DEFAULT_MATMUL_PRECISION="highest",
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  return subprocess.run([sys.executable, "-m", "trainer.lm_eval", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True)


def test_the_command_writes_the_results(trained, gen_task, results):
  done = cli(f"--workdir={trained}", "--tasks=tiny_mc,tiny_ppl,tiny_gen",
             f"--include_path={gen_task}", "--nobuiltin_tasks", "--batch_size=8")
  assert done.returncode == 0, done.stderr[-3000:]
  saved = json.loads(open(os.path.join(trained, "lm_eval_1.json")).read())
  for task, metric in (("tiny_mc", "acc,none"), ("tiny_gen", "exact_match,strip")):
    assert saved["results"][task][metric] == results["results"][task][metric]
  assert saved["config"]["step"] == 1 and saved["config"]["compiles"] <= 2
  assert ["tiny_mc", "acc", f"{saved['results']['tiny_mc']['acc,none']:.4f}"] in [
      line.split()[:3] for line in done.stdout.splitlines()], done.stdout


def test_an_unknown_task_is_refused_by_the_command_and_before_training(trained, root, tmp_path):
  done = cli(f"--workdir={trained}", "--tasks=tiny_mcq", f"--include_path={root / 'tasks'}",
             "--nobuiltin_tasks")
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().splitlines()[-1] == (
      f"trainer.lm_eval: --tasks: 'tiny_mcq' is not a task, group or tag among those under "
      f"{root / 'tasks'}; closest: ['tiny_mc']; suites: ['linear_rnn_zero_shot', 'paper_table1']")
  with pytest.raises(ValueError, match=r"run.lm_eval_tasks: 'tiny_mcq' is not a task, group "
                     r"or tag among those under .*; closest: \['tiny_mc'\]"):
    run_steps(train_config(root, "tiny_mc,tiny_mcq"), str(tmp_path), iter([]))
  assert not (tmp_path / "checkpoints").exists()


def test_a_moved_tokenizer_and_unreachable_task_data_are_named(trained, root, tmp_path):
  moved = tmp_path / "moved.model"
  (root / "sp.model").rename(moved)
  try:
    with pytest.raises(ValueError, match=f"step 1 of {trained} was trained with data.tokenizer="
                       f"{root / 'sp.model'}, which does not exist .*; give --tokenizer=PATH"):
      lm_eval_lib.open_checkpoint(trained)
    assert lm_eval_lib.open_checkpoint(trained, None, str(moved)).tokenizer.vocab_size == VOCAB
    with pytest.raises(ValueError, match=r"--tokenizer='/nowhere.model': no such SentencePiece"):
      lm_eval_lib.open_checkpoint(trained, None, "/nowhere.model")
  finally:
    moved.rename(root / "sp.model")
  (tmp_path / "tasks").mkdir()
  (tmp_path / "tasks" / "hub_mc.yaml").write_text(json.dumps({
      "task": "hub_mc", "dataset_path": "nobody/no_such_dataset", **TASKS["tiny_mc"]}))
  with pytest.raises(ValueError, match=r"--tasks=hub_mc: a task's data could not be read "
                     r"\(.*no_such_dataset.*\)\. lm-eval reads task data from the Hugging Face "
                     r"hub .*, or unset HF_DATASETS_OFFLINE; a cached task then runs offline"):
    lm_eval_lib.evaluate_checkpoint(trained, None, "hub_mc", include_path=str(tmp_path / "tasks"),
                                    builtin_tasks=False)


def test_bad_input_is_named(lm, monkeypatch):
  with pytest.raises(ValueError, match=r"a continuation of \d+ tokens \(' 0 1 2.* is longer "
                     f"than max_length={L}, so it cannot be scored; raise --max_length"):
    lm.loglikelihood(requests("loglikelihood", ("Q:", " " + " ".join(map(str, range(99))))))
  with pytest.raises(ValueError, match=f"max_gen_toks={L} must be an integer in \\[1, "
                     f"max_length={L}\\)"):
    lm.generate_until(requests("generate_until", ("Q:", {"until": [], "max_gen_toks": L})))
  with pytest.raises(ValueError, match="--tasks=' , ' names no task"):
    lm_eval_tasks.expand_tasks(" , ")
  with pytest.raises(ValueError, match="run.lm_eval_every_steps=2 needs run.lm_eval_tasks"):
    make_config(**{"run.lm_eval_every_steps": 2})
  monkeypatch.setitem(sys.modules, "lm_eval", None)
  with pytest.raises(ImportError, match=r"install it with pip install -e '.\[lm_eval\]'"):
    lm_eval_tasks.require_harness()


def test_suites_buckets_and_the_byte_tokenizer_prefix():
  assert length_buckets(2048) == (64, 128, 256, 512, 1024, 2048)
  assert length_buckets(1000) == (64, 128, 256, 512, 1000) and length_buckets(32) == (32,)
  assert score_row([1] * 20, [7], 8) == ([1] * 8, [1] * 7 + [7], 1)  # cut to 8 + 1 tokens
  assert lm_eval_tasks.expand_tasks("paper_table1,wikitext,piqa") == [
      "mmlu", "hellaswag", "piqa", "winogrande", "arc_easy", "arc_challenge", "wikitext"]
  assert lm_eval_tasks.expand_tasks("linear_rnn_zero_shot")[:2] == ["wikitext", "lambada_openai"]
  lm = GriffinLM(None, None, ByteTokenizer(), data_parallel_mesh(), max_length=L, batch_size=3)
  assert lm.prefix_token_id == ord("\n") and lm.tok_encode("ab") == [97, 98]  # no BOS
  assert lm.batch_size == 8 and "'\\n' (id 10)" in lm.get_model_info()["prefix_token"]
