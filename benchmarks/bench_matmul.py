"""The machine's own limit: float32 matmul GFLOP/s (NumPy BLAS), the yardstick for the others."""

from benchmarks.common import matmul_gflops, write_result

if __name__ == "__main__":
    rate = matmul_gflops()
    print(f"float32 matmul: {rate:.1f} GFLOP/s")
    write_result("bench_matmul", {"matmul_gflops": rate})
