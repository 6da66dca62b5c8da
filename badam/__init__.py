"""BAdam: block coordinate descent with Adam (or any torch optimizer) as the inner solver.

Public API:
    BlockOptimizer            badam/block_optimizer.py (constructor compatible with the official badam 1.4)
    BlockOptimizerRatio       badam/ratio.py (1.4's ratio mode: a fraction of every matrix trains)
    FP32MasterWeights         badam/mixed_precision.py (fp32 masters + fp32 gradient accumulation)
    infer_block_prefixes, layer_blocks, attention_mlp_blocks, matrix_blocks   badam/partition.py
    load_official             badam/reference.py (the official 1.4, imported as `badam_official`)
HF Trainer integration lives in badam.hf (imports transformers; not imported here), its activation checkpointing
policies in badam.checkpointing (block_checkpoint; chosen with badam.hf.enable_block_checkpointing(model, policy=...)),
the CUDA graphs of the graphed policies in badam.layer_graphs (LayerGraphs), the update on a side CUDA stream
(BlockOptimizer.overlap_update) in badam.overlap, data parallelism (BlockOptimizer(..., process_group=pg)) in
badam.data_parallel, the frozen blocks sharded over its ranks (BlockOptimizer.shard_frozen_blocks) in
badam.frozen_shards.
"""
from .block_optimizer import SWITCH_MODES, BlockOptimizer
from .mixed_precision import FP32MasterWeights
from .partition import attention_mlp_blocks, infer_block_prefixes, layer_blocks, matrix_blocks, prefix_matches
from .ratio import MASK_MODES, BlockOptimizerRatio
from .reference import load_official

__all__ = [
    "MASK_MODES", "SWITCH_MODES", "BlockOptimizer", "BlockOptimizerRatio", "FP32MasterWeights",
    "attention_mlp_blocks", "infer_block_prefixes", "layer_blocks", "load_official", "matrix_blocks", "prefix_matches",
]
