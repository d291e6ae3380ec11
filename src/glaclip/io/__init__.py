"""Files and arrays in and out: atomic files, images, region-mask files, exports, pictures."""
