"""The small T5s built offline: byte-reproducible folders that load as the real T5 does, and a shapes tokenizer that
knows every word of the captions, held-out combinations included."""

import torch

from cogvid.models.t5 import T5Conditioner
from cogvid.shapes.dataset import held_out_combinations, plain_caption, vocabulary
from cogvid.shapes.small_t5 import build_small_t5
from cogvid.shapes.text_encoder import SHAPES_T5, build_shapes_t5

TORCH_THREADS = 1


def files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_small_t5_is_the_same_bytes_for_the_same_corpus_and_seed(tmp_path):
    corpus = ["a red fox in snow", "a cat on a mat"] * 10
    a = files(build_small_t5(tmp_path / "a", corpus, exact_vocab=False))
    b = files(
        build_small_t5(tmp_path / "b", corpus, exact_vocab=False)
    )  # another folder: no path is recorded in the files
    c = files(build_small_t5(tmp_path / "c", corpus, seed=1, exact_vocab=False))
    assert set(a) == {"spiece.model", "config.json", "model.safetensors"}
    assert a == b
    assert c["spiece.model"] == a["spiece.model"] and c["model.safetensors"] != a["model.safetensors"]


def test_the_shapes_t5_reads_every_caption_word_and_tells_prompts_apart(tmp_path):
    t5 = T5Conditioner.from_pretrained(str(build_shapes_t5(tmp_path / "t5")), max_length=16)
    words = vocabulary()
    unk = t5.tokenizer.unk_token_id
    for word in (*words.colours, *words.shapes, *words.directions):
        ids = t5.tokenizer(word).input_ids
        assert unk not in ids and len(ids) == 2, (word, t5.tokenizer.convert_ids_to_tokens(ids))  # word + EOS
    prompts = [plain_caption(*combo) for combo in held_out_combinations()]
    context = t5.encode(prompts)
    assert context.shape == (len(prompts), 16, SHAPES_T5.d_model)
    for ids in t5.tokenizer(prompts).input_ids:
        assert unk not in ids and len(ids) <= 16  # a plain caption fits the shapes model's text_length
    flat = torch.nn.functional.normalize(context.flatten(1), dim=1)
    similarity = flat @ flat.T
    assert (similarity - torch.eye(len(prompts))).max() < 0.999  # no two prompts give the same context
