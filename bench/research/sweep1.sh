#!/bin/bash
# scheme sweep at fixed attention-error targets (bisection on global step multiplier), both docs
source "$(dirname "$0")/setup.sh"
run() { n=$1; shift; for t in 0.01 0.03 0.10; do ./lab -n "$n@$t" "$@" -z 1,3,19 -d 6,12 -t $t; done; }
run stdCh_stdTok256   -k mode=std,c=0.12,ctr=1 -v mode=std,c=0.12,gt=1,gc=256
run stdCh_stdTok256b  -k mode=std,c=0.12,ctr=1 -v mode=std,c=0.10,gt=1,gc=256
run stdGlob           -k mode=std,c=0.12,gt=256,gc=256 -v mode=std,c=0.12,gt=256,gc=256
run stdCh_Vglob       -k mode=std,c=0.12,ctr=1 -v mode=std,c=0.12,gt=256,gc=256
run pcaU_self         -k mode=pca,c=0.12,lay=1,unrope=1 -v mode=pca,c=0.12,lay=1
run pcaU_cross        -k mode=pca,c=0.12,lay=1,unrope=1,cross=1 -v mode=pca,c=0.12,lay=1,cross=1
run pcaUqw_cross      -k mode=pca,c=0.12,lay=1,unrope=1,cross=1,qw=1 -v mode=pca,c=0.12,lay=1,cross=1
run pcaUqw_self       -k mode=pca,c=0.12,lay=1,unrope=1,qw=1 -v mode=pca,c=0.12,lay=1
