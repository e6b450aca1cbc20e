// Build module for flanneld (deploy/flannel.sh). flannel v0.28.10's go.mod has no replace
// directives, but it requires github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc
// v1.3.188, which the Go module proxy does not serve ("403 This module version is not
// available"; so are v1.3.79 and the other v1.3.x of that module for v0.28.4). Only the
// tencentvpc backend (Tencent Cloud routes; never used by the lab) imports it: it is pinned
// to v1.3.75, a version the proxy serves (its version list answers 404), with the rest of flannel's requirements
// as published.
module netweft.local/build/flannel

go 1.26.0

require github.com/flannel-io/flannel v0.28.10

replace github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc => github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/vpc v1.3.75
