#!/bin/bash
# fixed-constant recipes, both documents (no per-doc tuning)
source "$(dirname "$0")/setup.sh"
for c in 0.025 0.0765 0.26; do ./lab -n "PCA-cross c=$c" -k mode=pca,c=$c,lay=1,unrope=1,cross=1 -v mode=pca,c=$c,lay=1,cross=1 -z 1,3,19 -d 6,12; done
for c in 0.028 0.084 0.28; do ./lab -n "scalar c=$c" -k mode=std,c=$c,ctr=1 -v mode=std,c=$c,gt=256,gc=256 -z 1,3,19 -d 6,12; done
for b in 8 7 6 4; do ./lab -n "minmax b=$b" -k mode=minmax,bits=$b -v mode=minmax,bits=$b -z 1,3,19 -d 6,12; done
for c in 0.025 0.0765 0.26; do ./lab -n "PCA-cross-tokmaj c=$c" -k mode=pca,c=$c,lay=0,unrope=1,cross=1 -v mode=pca,c=$c,lay=0,cross=1 -z 1,3,19 -d 6,12; done
./lab -n "PCAqw-cross-tokmaj c=0.26" -k mode=pca,c=0.26,lay=0,unrope=1,cross=1,qw=1 -v mode=pca,c=0.26,lay=0,cross=1 -z 1,3,19 -d 6,12
# lossless: SPLIT=1 compresses the two byte planes as separate zstd frames
for lv in 0 1 2 3 4; do ./lab -n lossless_lv$lv -k mode=lossless,lv=$lv -v mode=lossless,lv=$lv -z 1,3,9,19 -d 6,12; done
SPLIT=1 ./lab -n lossless_lv1_split -k mode=lossless,lv=1 -v mode=lossless,lv=1 -z 1,3,9,19 -d 12
# decode speed
./lab -n spd_std -k mode=std,c=0.0875,ctr=1 -v mode=std,c=0.0875,gt=256,gc=256 -z 1 -d 12 -1 -s
./lab -n spd_pca -k mode=pca,c=0.0775,lay=1,unrope=1,cross=1 -v mode=pca,c=0.0775,lay=1,cross=1 -z 1 -d 12 -1 -s
