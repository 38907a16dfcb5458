package testbed

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Image is a container image written as a docker-archive file, which `ctr images import` (and
// `docker load`) read: no registry is reachable from the test machines, so every image a node runs
// is built here with buildah and imported into its containerd.
type Image struct {
	Name    string // as a pod names it: kptune.test/kube-proxy:0123456789ab
	Archive string
}

// imageCache holds the built archives, named for their content.
func imageCache() string {
	cache := os.Getenv("KPTUNE_CACHE")
	if cache == "" {
		cache = filepath.Join(os.Getenv("HOME"), ".cache", "kptune")
	}
	return filepath.Join(cache, "images")
}

// PauseImage builds the pod sandbox image from test/images/pause.
func PauseImage(ctx context.Context) (Image, error) {
	dir, err := os.MkdirTemp("", "kptune-pause-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "rootfs", "pause")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, "./test/images/pause")
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("build the pause program: %v: %s", err, out)
	}
	return buildImage(ctx, "kptune.test/pause", filepath.Join(dir, "rootfs"), []string{"/pause"})
}

// KubeProxyImage builds an image of a kube-proxy binary with the netfilter userland it runs (legacy
// iptables, as iptables-wrapper picks on a node whose rules are legacy, and nft), taken with their
// libraries from this machine: what kubeadm's DaemonSet runs, registry.k8s.io/kube-proxy, is not
// reachable. It holds no ip6tables, so kube-proxy runs IPv4 only in iptables mode, as the test bed's
// single-stack kube-proxies do.
func KubeProxyImage(ctx context.Context, kubeProxy string) (Image, error) {
	dir, err := os.MkdirTemp("", "kptune-kube-proxy-image-")
	if err != nil {
		return Image{}, err
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "rootfs")
	if err := copyFile(kubeProxy, filepath.Join(root, "usr/local/bin/kube-proxy"), 0o755); err != nil {
		return Image{}, err
	}
	multi, err := exec.LookPath("xtables-legacy-multi")
	if err != nil {
		return Image{}, fmt.Errorf("no xtables-legacy-multi: run test/setup.sh (Debian's iptables package)")
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		return Image{}, fmt.Errorf("no nft: run test/setup.sh (Debian's nftables package)")
	}
	for _, bin := range []string{multi, nft} {
		if err := copyWithLibraries(root, bin, filepath.Join("usr/sbin", filepath.Base(bin)), 0o755); err != nil {
			return Image{}, err
		}
	}
	for _, name := range []string{"iptables", "iptables-save", "iptables-restore"} {
		if err := os.Symlink("xtables-legacy-multi", filepath.Join(root, "usr/sbin", name)); err != nil {
			return Image{}, err
		}
	}
	// iptables loads its match and target extensions at run time.
	exts, _ := filepath.Glob("/usr/lib/*-linux-gnu/xtables/*.so")
	if len(exts) == 0 {
		return Image{}, fmt.Errorf("no iptables extensions under /usr/lib/*-linux-gnu/xtables: reinstall Debian's iptables package")
	}
	for _, e := range exts {
		// With their own libraries too: the statistic match, which spreads a Service over its
		// endpoints, needs libm.
		if err := copyWithLibraries(root, e, e, 0o644); err != nil {
			return Image{}, err
		}
	}
	for _, d := range []string{"run", "tmp", "var/lib/kube-proxy", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return Image{}, err
		}
	}
	return buildImage(ctx, "kptune.test/kube-proxy", root, []string{"/usr/local/bin/kube-proxy"}, "PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
}

// KptuneImage builds kptune's image with `make image` (the Dockerfile, through buildah here) and
// returns its archive.
func KptuneImage(ctx context.Context) (Image, error) {
	cmd := exec.CommandContext(ctx, "make", "-s", "image")
	cmd.Dir = RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		return Image{}, fmt.Errorf("make image: %v: %s", err, tailOf(out, 5))
	}
	archive := filepath.Join(RepoRoot(), "bin", "kptune-image.tar")
	if _, err := os.Stat(archive); err != nil {
		return Image{}, fmt.Errorf("make image wrote no %s: %w", archive, err)
	}
	return Image{Name: "localhost/kptune:latest", Archive: archive}, nil
}

// copyWithLibraries copies file to dst under root, and the shared libraries it loads to their paths.
func copyWithLibraries(root, file, dst string, mode os.FileMode) error {
	if err := copyFile(file, filepath.Join(root, dst), mode); err != nil {
		return err
	}
	libs, err := sharedLibraries(file)
	if err != nil {
		return err
	}
	for _, lib := range libs {
		if err := copyFile(lib, filepath.Join(root, lib), 0o755); err != nil {
			return err
		}
	}
	return nil
}

var libRE = regexp.MustCompile(`(?m)(?:=> )?(/\S+\.so[.\d]*) \(0x`)

// sharedLibraries lists the shared libraries a program loads, as ldd resolves them here.
func sharedLibraries(bin string) ([]string, error) {
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", bin, err)
	}
	var libs []string
	for _, m := range libRE.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s found no library: is it a dynamic executable?", bin)
	}
	return libs, nil
}

// buildImage commits root as an image FROM scratch with buildah and writes it as a docker-archive
// under the cache, named for the hash of its content, reusing an archive already there.
func buildImage(ctx context.Context, repo, root string, entrypoint []string, env ...string) (Image, error) {
	sum, err := treeHash(root)
	if err != nil {
		return Image{}, err
	}
	name := repo + ":" + sum[:12]
	archive := filepath.Join(imageCache(), strings.ReplaceAll(strings.TrimPrefix(name, "kptune.test/"), ":", "-")+".tar")
	if _, err := os.Stat(archive); err == nil {
		return Image{Name: name, Archive: archive}, nil
	}
	if err := os.MkdirAll(imageCache(), 0o755); err != nil {
		return Image{}, err
	}
	buildah := func(args ...string) (string, error) {
		out, err := exec.CommandContext(ctx, "buildah", args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("buildah %s: %v: %s", strings.Join(args, " "), err, tailOf(out, 5))
		}
		return strings.TrimSpace(string(out)), nil
	}
	cid, err := buildah("from", "--quiet", "scratch")
	if err != nil {
		return Image{}, err
	}
	defer buildah("rm", cid)
	if _, err := buildah("copy", "--quiet", cid, root+"/.", "/"); err != nil {
		return Image{}, err
	}
	cfg := []string{"config", "--entrypoint", `["` + strings.Join(entrypoint, `","`) + `"]`, "--cmd", ""}
	for _, e := range env {
		cfg = append(cfg, "--env", e)
	}
	if _, err := buildah(append(cfg, cid)...); err != nil {
		return Image{}, err
	}
	if _, err := buildah("commit", "--quiet", "--rm", cid, name); err != nil {
		return Image{}, err
	}
	tmp := archive + ".tmp"
	os.Remove(tmp)
	if _, err := buildah("push", "--quiet", name, "docker-archive:"+tmp+":"+name); err != nil {
		return Image{}, err
	}
	_, _ = buildah("rmi", name)
	return Image{Name: name, Archive: archive}, os.Rename(tmp, archive)
}

// treeHash hashes the names, modes, link targets and contents of the files under root.
func treeHash(root string) (string, error) {
	h := sha256.New()
	err := filepath.Walk(root, func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		fmt.Fprintf(h, "%s %v\n", rel, fi.Mode())
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			t, err := os.Readlink(path)
			if err != nil {
				return err
			}
			io.WriteString(h, t)
		case fi.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(h, f); err != nil {
				return err
			}
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// tailOf is the last n lines of out.
func tailOf(out []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
