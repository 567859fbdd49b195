"""From rows to model inputs, each step a module:

1. `packers`: a row's texts -> two token sequences in the model's input layout (a siamese
   pair's sides, or a cross-encoder's two orders), truncated to fit; the packer also says how a
   batch reads them back as model inputs.
2. `token_store`: those sequences kept without padding, and their on-disk cache.
3. `featurize`: the seam: a frame packed once (tokens, side features) into `FeaturizedRows`.
4. `batching`: rows of similar length grouped into global batches, padded to few bucket
   lengths, the same on every process (NumPy only).
5. `feeding`: batch plans as a prefetched tf.data pipeline of this process's share.
"""
