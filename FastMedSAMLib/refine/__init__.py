"""Refinement by clicking (`litemedsam-refine`): LiteMedSAM's frozen encoder with a prompt encoder + mask decoder
fine-tuned here for boxes, include/exclude points and the previous mask as a dense prompt.

`split` (train / validation by case), `data` (cached training embeddings), `simulate` (click simulation),
`train` (the fine-tuning loop), `engine` (2D refinement and mask-prompted 3D propagation), `protocol` (the
`eval --protocol refine` clicks and report), `figure` (a PNG of one click sequence)."""
