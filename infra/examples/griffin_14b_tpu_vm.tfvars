# Griffin-14B on 2 x v5p-128 TPU VMs (launch/tpu_vm.py creates the slices).
project     = "my-project"
region      = "us-east5"
zone        = "us-east5-a"
bucket_name = "my-project-griffin"
tpu_type    = "v5p-128"
num_slices  = 2
