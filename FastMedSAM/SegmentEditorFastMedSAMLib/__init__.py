"""The FastMedSAM Segment Editor effect (SegmentEditorEffect.py, loaded by SegmentEditorFastMedSAM.py)."""
