"""Griffin, Hawk and the MQA baseline (De, Smith et al., 2024) in Flax NNX.

Notation used in every array name (`x_BTD`) and einsum in this package:
  B batch             T time (queries)        S time (keys, cache slots)
  D width             E RG-LRU width (D_RNN)  F MLP hidden width (3D)
  G gate blocks       I gate block width E/G  W Conv1D width
  N query heads       H head dim              V vocabulary
  L scanned layer groups                      P sequence shards (time split)

Packed rows: `segment_pos_BT` restarts at 0 for each document and grows by one
per token. Every temporal mixer reads only that: the RG-LRU resets where it is
0, and a token at position p sees at most the p previous tokens (Conv1D taps,
attention keys), so nothing crosses a document boundary.

Import what you need from the modules (`model.config`, `model.griffin`, ...);
this file imports nothing so that configs validate without loading JAX.
"""
