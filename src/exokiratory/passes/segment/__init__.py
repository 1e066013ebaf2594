"""Segment-level building blocks: COCO RLE masks, mask geometry and automatic mask generation.

``rle`` has no torch dependency (pycocotools + numpy) so readers of the ``segments`` dataset can
decode masks without the ``ml`` extra; ``amg`` (SAM automatic mask generation) needs torch.
"""
