"""From rows to model inputs: packing texts into tokens, token storage, batch plans, feeding."""
