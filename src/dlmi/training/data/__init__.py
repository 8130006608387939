"""The data path of a run: the source and its split, the image cache, epoch sampling, augmentation."""
